#include "core/load.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace eplb {

absl::Status ValidateLoad(const LoadMatrix& load, int32_t num_layers, int32_t num_experts) {
  if (load.num_layers != num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("load has ", load.num_layers, " layers, expected num_layers = ", num_layers));
  }
  if (load.num_experts != num_experts) {
    return absl::InvalidArgumentError(absl::StrCat("load has ", load.num_experts,
                                                   " experts per layer, expected "
                                                   "num_logical_experts = ",
                                                   num_experts));
  }
  if (load.values.size() != static_cast<size_t>(num_layers) * num_experts) {
    return absl::InvalidArgumentError(absl::StrCat(
        "load holds ", load.values.size(), " values, expected ", num_layers, " × ", num_experts));
  }
  for (int32_t l = 0; l < num_layers; ++l) {
    const auto row = load.row(l);
    for (int32_t e = 0; e < num_experts; ++e) {
      const double v = row[e];
      if (!std::isfinite(v)) {
        return absl::InvalidArgumentError(
            absl::StrCat("load[", l, "][", e, "] = ", v, " is not a finite number"));
      }
      if (v < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("load[", l, "][", e, "] = ", v, " is negative"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace eplb
