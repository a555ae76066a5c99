#include "core/deepseek_policy.h"

#include <algorithm>
#include <bit>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"

namespace eplb {
namespace {

// Scratch space reused across layers so that planning allocates once per call.
struct Scratch {
  std::vector<uint64_t> keys;
  std::vector<int32_t> count;
  std::vector<double> load;
  std::vector<std::pair<double, int32_t>> pack_heap;
  struct Replica {
    float quotient;
    int32_t expert;
  };
  std::vector<Replica> replica_heap;
  std::vector<float> quotient;
};

// Replication scans all quotients for each added replica while (added replicas × experts) stays
// under this; beyond it a heap is cheaper.
constexpr int64_t kMaxReplicaScanWork = 4096;

// Packs with at most this many packs pick the lightest by a linear scan; more use a heap.
constexpr int32_t kMaxPacksForScan = 32;

// Balanced packing of n items with weights x into m packs of exactly n/m items each. Items are
// visited by decreasing weight (stable: equal weights in index order); each goes to the lightest
// pack that still has room (equal loads: the lowest pack index). Pack loads accumulate in double.
// Writes pack[i] and pos[i] (the item's position inside its pack).
// REQUIRES: every x[i] is finite and ≥ 0.
void Pack(const float* x, int32_t n, int32_t m, int32_t* pack, int32_t* pos, Scratch& s) {
  const int32_t cap = n / m;
  if (cap == 1) {
    for (int32_t i = 0; i < n; ++i) {
      pack[i] = i;
      pos[i] = 0;
    }
    return;
  }
  // One sort key per item: the complemented bits of a non-negative float order like the float,
  // descending; the index in the low half breaks ties toward the lower index, like a stable sort.
  s.keys.resize(n);
  for (int32_t i = 0; i < n; ++i) {
    const float v = x[i] == 0.0f ? 0.0f : x[i];  // -0.0 ties with 0.0
    s.keys[i] = (uint64_t{~std::bit_cast<uint32_t>(v)} << 32) | static_cast<uint32_t>(i);
  }
  std::sort(s.keys.begin(), s.keys.end());
  s.count.assign(m, 0);
  if (m <= kMaxPacksForScan) {
    // A full pack's load becomes +inf, so the scan never picks it (some pack always has room).
    s.load.assign(m, 0.0);
    for (uint64_t key : s.keys) {
      const int32_t item = static_cast<int32_t>(key & 0xffffffffu);
      // Branch-free argmin (the comparisons are unpredictable); strict < keeps the lowest index.
      int32_t best = 0;
      double best_load = s.load[0];
      for (int32_t j = 1; j < m; ++j) {
        const bool lighter = s.load[j] < best_load;
        best = lighter ? j : best;
        best_load = lighter ? s.load[j] : best_load;
      }
      pack[item] = best;
      pos[item] = s.count[best]++;
      s.load[best] = s.count[best] == cap ? std::numeric_limits<double>::infinity()
                                          : s.load[best] + static_cast<double>(x[item]);
    }
    return;
  }
  // Min-heap on (load, pack index): the top is the lightest non-full pack, lowest index on ties.
  auto& heap = s.pack_heap;
  heap.clear();
  for (int32_t j = 0; j < m; ++j) heap.emplace_back(0.0, j);  // ascending: already a min-heap
  const auto greater = std::greater<std::pair<double, int32_t>>();
  for (uint64_t key : s.keys) {
    const int32_t item = static_cast<int32_t>(key & 0xffffffffu);
    std::pop_heap(heap.begin(), heap.end(), greater);
    auto& [load, j] = heap.back();
    pack[item] = j;
    pos[item] = s.count[j]++;
    load += static_cast<double>(x[item]);
    if (s.count[j] < cap) {
      std::push_heap(heap.begin(), heap.end(), greater);
    } else {
      heap.pop_back();
    }
  }
}

// Replicates n experts with weights w into m ≥ n replicas: replica i < n is expert i; each further
// replica goes to the expert with the largest w / count (a float32 quotient; ties: lowest index).
// Writes phy[m] (expert of each replica), rank[m] (its replica rank) and cnt[n].
void Replicate(const float* w, int32_t n, int32_t m, int32_t* phy, int32_t* rank, int32_t* cnt,
               Scratch& s) {
  for (int32_t i = 0; i < n; ++i) {
    phy[i] = i;
    rank[i] = 0;
    cnt[i] = 1;
  }
  if (m == n) return;
  if (int64_t{m - n} * n <= kMaxReplicaScanWork) {
    // Few replicas to add: a branch-free scan for the largest quotient (strict > keeps the lowest
    // index) beats keeping a heap.
    auto& quotient = s.quotient;
    quotient.assign(w, w + n);  // w / 1
    for (int32_t i = n; i < m; ++i) {
      int32_t r = 0;
      float best = quotient[0];
      for (int32_t k = 1; k < n; ++k) {
        const bool heavier = quotient[k] > best;
        r = heavier ? k : r;
        best = heavier ? quotient[k] : best;
      }
      phy[i] = r;
      rank[i] = cnt[r];
      ++cnt[r];
      quotient[r] = w[r] / static_cast<float>(cnt[r]);
    }
    return;
  }
  // Max-heap on quotient, lowest index first among equal quotients.
  auto before = [](const Scratch::Replica& a, const Scratch::Replica& b) {
    return a.quotient < b.quotient || (a.quotient == b.quotient && a.expert > b.expert);
  };
  auto& heap = s.replica_heap;
  heap.resize(n);
  for (int32_t i = 0; i < n; ++i) heap[i] = {w[i], i};  // w / 1
  std::make_heap(heap.begin(), heap.end(), before);
  for (int32_t i = n; i < m; ++i) {
    std::pop_heap(heap.begin(), heap.end(), before);
    Scratch::Replica& top = heap.back();
    const int32_t r = top.expert;
    phy[i] = r;
    rank[i] = cnt[r];
    ++cnt[r];
    top.quotient = w[r] / static_cast<float>(cnt[r]);
    std::push_heap(heap.begin(), heap.end(), before);
  }
}

}  // namespace

absl::StatusOr<ExpertMap> DeepSeekPolicy::PlanValidated(const PlanInput& input) const {
  const DeploymentShape& shape = input.shape;
  const int32_t L = shape.num_layers, E = shape.num_logical_experts, R = shape.num_ranks,
                P = shape.num_physical_experts;
  if (P % R != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("policy deepseek needs num_physical_experts (", P,
                     ") to be a multiple of num_ranks (", R, ")"));
  }
  int32_t G = shape.num_groups, N = shape.num_nodes;
  if (G % N != 0) G = N = 1;  // the global policy
  const int32_t gs = E / G, gpn = G / N, En = E / N, Pn = P / N, Rn = R / N, S = P / R;

  std::vector<int32_t> phy2log(static_cast<size_t>(L) * P);
  std::vector<int32_t> replica_rank(static_cast<size_t>(L) * P);
  std::vector<float> w(E), gw(G), wl(En), t(Pn);
  std::vector<int32_t> group_node(G), group_pos(G), minv(E);
  std::vector<int32_t> phy(Pn), rank(Pn), cnt(En), gpu(Pn), pos(Pn);
  Scratch scratch;

  for (int32_t l = 0; l < L; ++l) {
    const auto load = input.load->row(l);
    for (int32_t e = 0; e < E; ++e) w[e] = static_cast<float>(load[e]);

    // 1. Groups to nodes; renumber experts node-major: minv[m(e)] = e.
    for (int32_t g = 0; g < G; ++g) {
      float sum = 0.0f;
      for (int32_t j = 0; j < gs; ++j) sum += w[g * gs + j];
      gw[g] = sum;
    }
    Pack(gw.data(), G, N, group_node.data(), group_pos.data(), scratch);
    for (int32_t g = 0; g < G; ++g) {
      const int32_t base = (group_node[g] * gpn + group_pos[g]) * gs;
      for (int32_t j = 0; j < gs; ++j) minv[base + j] = g * gs + j;
    }

    int32_t* out_log = phy2log.data() + static_cast<size_t>(l) * P;
    int32_t* out_rank = replica_rank.data() + static_cast<size_t>(l) * P;
    for (int32_t n = 0; n < N; ++n) {
      // 2. Replicas inside the node.
      for (int32_t i = 0; i < En; ++i) wl[i] = w[minv[n * En + i]];
      Replicate(wl.data(), En, Pn, phy.data(), rank.data(), cnt.data(), scratch);
      // 3. Replicas onto the node's ranks, by per-replica load.
      for (int32_t i = 0; i < Pn; ++i) t[i] = wl[phy[i]] / static_cast<float>(cnt[phy[i]]);
      Pack(t.data(), Pn, Rn, gpu.data(), pos.data(), scratch);
      // 4. Global slot of replica i: n·Pn + gpu·S + pos.
      for (int32_t i = 0; i < Pn; ++i) {
        const int32_t slot = n * Pn + gpu[i] * S + pos[i];
        out_log[slot] = minv[n * En + phy[i]];
        out_rank[slot] = rank[i];
      }
    }
  }
  return ExpertMap::FromReplicaRanks(L, E, shape.slot_layout(), std::move(phy2log), replica_rank);
}

}  // namespace eplb
