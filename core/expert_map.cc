#include "core/expert_map.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "core/status_macros.h"

namespace eplb {
namespace {

absl::Status CheckDims(int32_t num_layers, int32_t num_logical_experts, const SlotLayout& layout) {
  DeploymentShape shape;
  shape.num_layers = num_layers;
  shape.num_logical_experts = num_logical_experts;
  shape.num_ranks = layout.num_ranks();
  shape.num_physical_experts = layout.num_slots();
  return ValidateShape(shape);
}

absl::Status CheckSize(const char* table, size_t size, int64_t expected, const char* dims) {
  if (static_cast<int64_t>(size) == expected) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(table, " has ", size, " entries, expected ", dims, " = ", expected));
}

}  // namespace

// Checks phy2log and fills logcnt_ and replica_offsets_; sizes replica_slots_ without filling it.
absl::Status ExpertMap::IndexPhy2Log() {
  const int32_t L = num_layers_, E = num_logical_experts_, P = layout_.num_slots();
  RETURN_IF_ERROR(CheckSize("phy2log", phy2log_.size(), int64_t{L} * P, "L × P"));
  logcnt_.assign(static_cast<size_t>(L) * E, 0);
  replica_offsets_.assign(static_cast<size_t>(L) * (E + 1), 0);
  replica_slots_.assign(static_cast<size_t>(L) * P, -1);
  for (int32_t l = 0; l < L; ++l) {
    const int32_t* row = phy2log_.data() + static_cast<size_t>(l) * P;
    int32_t* cnt = logcnt_.data() + static_cast<size_t>(l) * E;
    for (int32_t p = 0; p < P; ++p) {
      if (row[p] < 0 || row[p] >= E) {
        return absl::InvalidArgumentError(absl::StrCat("phy2log[", l, "][", p, "] = ", row[p],
                                                       " is out of range [0, ", E - 1, "]"));
      }
      ++cnt[row[p]];
    }
    int32_t* off = replica_offsets_.data() + static_cast<size_t>(l) * (E + 1);
    for (int32_t e = 0; e < E; ++e) {
      if (cnt[e] == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("logical expert ", e, " of layer ", l, " has no slot in phy2log"));
      }
      off[e + 1] = off[e] + cnt[e];
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ExpertMap> ExpertMap::FromPhy2Log(int32_t num_layers, int32_t num_logical_experts,
                                                 SlotLayout layout, std::vector<int32_t> phy2log) {
  RETURN_IF_ERROR(CheckDims(num_layers, num_logical_experts, layout));
  ExpertMap map(num_layers, num_logical_experts, layout);
  map.phy2log_ = std::move(phy2log);
  RETURN_IF_ERROR(map.IndexPhy2Log());
  const int32_t E = num_logical_experts, P = layout.num_slots();
  std::vector<int32_t> fill(E);
  for (int32_t l = 0; l < num_layers; ++l) {
    const int32_t* row = map.phy2log_.data() + static_cast<size_t>(l) * P;
    const int32_t* off = map.replica_offsets_.data() + static_cast<size_t>(l) * (E + 1);
    int32_t* slots = map.replica_slots_.data() + static_cast<size_t>(l) * P;
    std::copy(off, off + E, fill.begin());
    for (int32_t p = 0; p < P; ++p) slots[fill[row[p]]++] = p;
  }
  return map;
}

absl::StatusOr<ExpertMap> ExpertMap::FromReplicaRanks(int32_t num_layers,
                                                      int32_t num_logical_experts,
                                                      SlotLayout layout,
                                                      std::vector<int32_t> phy2log,
                                                      const std::vector<int32_t>& replica_rank) {
  RETURN_IF_ERROR(CheckDims(num_layers, num_logical_experts, layout));
  ExpertMap map(num_layers, num_logical_experts, layout);
  map.phy2log_ = std::move(phy2log);
  RETURN_IF_ERROR(map.IndexPhy2Log());
  const int32_t E = num_logical_experts, P = layout.num_slots();
  RETURN_IF_ERROR(CheckSize("replica_rank", replica_rank.size(), int64_t{num_layers} * P, "L × P"));
  for (int32_t l = 0; l < num_layers; ++l) {
    const size_t row_base = static_cast<size_t>(l) * P;
    const int32_t* off = map.replica_offsets_.data() + static_cast<size_t>(l) * (E + 1);
    for (int32_t p = 0; p < P; ++p) {
      const int32_t e = map.phy2log_[row_base + p];
      const int32_t k = replica_rank[row_base + p];
      const int32_t cnt = off[e + 1] - off[e];
      if (k < 0 || k >= cnt) {
        return absl::InvalidArgumentError(absl::StrCat("replica_rank[", l, "][", p, "] = ", k,
                                                       " is out of range [0, ", cnt - 1,
                                                       "] for logical expert ", e));
      }
      int32_t& slot = map.replica_slots_[row_base + off[e] + k];
      if (slot != -1) {
        return absl::InvalidArgumentError(absl::StrCat("replica_rank[", l, "][", p, "] = ", k,
                                                       " repeats the rank of slot ", slot,
                                                       " (logical expert ", e, ")"));
      }
      slot = p;
    }
  }
  return map;
}

absl::StatusOr<ExpertMap> ExpertMap::FromTables(int32_t num_layers, int32_t num_logical_experts,
                                                SlotLayout layout, std::vector<int32_t> phy2log,
                                                const std::vector<int32_t>& log2phy,
                                                const std::vector<int32_t>& logcnt) {
  RETURN_IF_ERROR(CheckDims(num_layers, num_logical_experts, layout));
  ExpertMap map(num_layers, num_logical_experts, layout);
  map.phy2log_ = std::move(phy2log);
  RETURN_IF_ERROR(map.IndexPhy2Log());
  const int32_t L = num_layers, E = num_logical_experts, P = layout.num_slots();
  const int32_t W = map.log2phy_width();
  RETURN_IF_ERROR(CheckSize("logcnt", logcnt.size(), int64_t{L} * E, "L × E"));
  RETURN_IF_ERROR(CheckSize("log2phy", log2phy.size(), int64_t{L} * E * W, "L × E × (P − E + 1)"));
  for (int32_t l = 0; l < L; ++l) {
    for (int32_t e = 0; e < E; ++e) {
      const size_t i = static_cast<size_t>(l) * E + e;
      if (logcnt[i] != map.logcnt_[i]) {
        return absl::InvalidArgumentError(absl::StrCat("logcnt[", l, "][", e, "] = ", logcnt[i],
                                                       ", but phy2log holds expert ", e, " in ",
                                                       map.logcnt_[i], " slot(s)"));
      }
    }
  }
  for (int32_t l = 0; l < L; ++l) {
    const int32_t* row = map.phy2log_.data() + static_cast<size_t>(l) * P;
    const int32_t* off = map.replica_offsets_.data() + static_cast<size_t>(l) * (E + 1);
    int32_t* slots = map.replica_slots_.data() + static_cast<size_t>(l) * P;
    for (int32_t e = 0; e < E; ++e) {
      const int32_t cnt = off[e + 1] - off[e];
      const int32_t* entries = log2phy.data() + (static_cast<size_t>(l) * E + e) * W;
      for (int32_t k = 0; k < W; ++k) {
        const int32_t s = entries[k];
        if (k >= cnt) {
          if (s != -1) {
            return absl::InvalidArgumentError(
                absl::StrCat("log2phy[", l, "][", e, "][", k, "] = ", s,
                             ", expected -1 padding after logcnt = ", cnt, " replicas"));
          }
          continue;
        }
        if (s < 0 || s >= P) {
          return absl::InvalidArgumentError(absl::StrCat("log2phy[", l, "][", e, "][", k, "] = ", s,
                                                         " is out of range [0, ", P - 1, "]"));
        }
        if (row[s] != e) {
          return absl::InvalidArgumentError(absl::StrCat("log2phy[", l, "][", e, "][", k, "] = ", s,
                                                         ", but phy2log[", l, "][", s,
                                                         "] = ", row[s]));
        }
        for (int32_t j = 0; j < k; ++j) {
          if (slots[off[e] + j] == s) {
            return absl::InvalidArgumentError(absl::StrCat("log2phy[", l, "][", e, "][", k,
                                                           "] = ", s, " repeats log2phy[", l, "][",
                                                           e, "][", j, "]"));
          }
        }
        slots[off[e] + k] = s;
      }
    }
  }
  return map;
}

std::vector<int32_t> ExpertMap::PaddedLog2Phy() const {
  const int32_t E = num_logical_experts_, W = log2phy_width();
  std::vector<int32_t> out(static_cast<size_t>(num_layers_) * E * W);
  for (int32_t l = 0; l < num_layers_; ++l) {
    for (int32_t e = 0; e < E; ++e) {
      PaddedLog2PhyRow(l, e,
                       std::span<int32_t>(out).subspan((static_cast<size_t>(l) * E + e) * W, W));
    }
  }
  return out;
}

void ExpertMap::PaddedLog2PhyRow(int32_t layer, int32_t expert, std::span<int32_t> out) const {
  const auto slots = replicas(layer, expert);
  EPLB_CHECK(out.size() == static_cast<size_t>(log2phy_width()), out.size());
  std::copy(slots.begin(), slots.end(), out.begin());
  std::fill(out.begin() + static_cast<ptrdiff_t>(slots.size()), out.end(), -1);
}

uint64_t ExpertMap::Hash() const {
  constexpr uint64_t kOffsetBasis = 14695981039346656037ULL;
  constexpr uint64_t kPrime = 1099511628211ULL;
  uint64_t hash = kOffsetBasis;
  const auto mix = [&hash](int32_t value) {
    const auto bits = static_cast<uint32_t>(value);
    for (int shift = 0; shift < 32; shift += 8) {
      hash ^= (bits >> shift) & 0xffu;
      hash *= kPrime;
    }
  };
  mix(num_layers_);
  mix(num_logical_experts_);
  mix(num_physical_experts());
  mix(num_ranks());
  for (const int32_t expert : phy2log_) mix(expert);
  return hash;
}

absl::Status ExpertMap::CheckFits(const DeploymentShape& shape) const {
  auto differs = [](const char* field, int64_t map_value, int64_t shape_value) {
    return absl::InvalidArgumentError(absl::StrCat("map has ", field, " = ", map_value,
                                                   ", but the deployment has ", shape_value));
  };
  if (num_layers_ != shape.num_layers) return differs("num_layers", num_layers_, shape.num_layers);
  if (num_logical_experts_ != shape.num_logical_experts) {
    return differs("num_logical_experts", num_logical_experts_, shape.num_logical_experts);
  }
  if (num_physical_experts() != shape.num_physical_experts) {
    return differs("num_physical_experts", num_physical_experts(), shape.num_physical_experts);
  }
  if (num_ranks() != shape.num_ranks) return differs("num_ranks", num_ranks(), shape.num_ranks);
  return absl::OkStatus();
}

}  // namespace eplb
