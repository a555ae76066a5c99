// A load matrix: tokens routed to each logical expert of each layer (counts, or smoothed averages).
#ifndef EPLB_CORE_LOAD_H_
#define EPLB_CORE_LOAD_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"

namespace eplb {

struct LoadMatrix {
  int32_t num_layers = 0;
  int32_t num_experts = 0;
  std::vector<double> values;  // row-major, num_layers × num_experts

  std::span<const double> row(int32_t layer) const {
    return {values.data() + static_cast<size_t>(layer) * num_experts,
            static_cast<size_t>(num_experts)};
  }
  std::span<double> row(int32_t layer) {
    return {values.data() + static_cast<size_t>(layer) * num_experts,
            static_cast<size_t>(num_experts)};
  }
  friend bool operator==(const LoadMatrix&, const LoadMatrix&) = default;
};

// OK when `load` has the given dimensions and every value is finite and non-negative; otherwise
// INVALID_ARGUMENT naming the first offending entry, e.g. "load[3][17] = -1 is negative".
absl::Status ValidateLoad(const LoadMatrix& load, int32_t num_layers, int32_t num_experts);

}  // namespace eplb

#endif  // EPLB_CORE_LOAD_H_
