#include "core/replica_bounds.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace eplb {

void RunsOf(std::span<const double> load, std::span<const int32_t> count,
            std::vector<ReplicaRun>& runs) {
  runs.clear();
  for (size_t e = 0; e < load.size(); ++e) runs.push_back({load[e] / count[e], count[e]});
  std::sort(runs.begin(), runs.end(),
            [](const ReplicaRun& a, const ReplicaRun& b) { return a.weight > b.weight; });
}

double PairedMax(std::span<const ReplicaRun> runs) {
  if (runs.empty()) return 0;
  double max = 0;
  size_t i = 0, j = runs.size() - 1;
  int32_t left_i = runs[0].n, left_j = runs[j].n;
  while (i < j) {
    const int32_t k = std::min(left_i, left_j);
    max = std::max(max, runs[i].weight + runs[j].weight);
    left_i -= k;
    left_j -= k;
    if (left_i == 0) {
      ++i;
      left_i = i < j ? runs[i].n : left_j;
    }
    if (left_j == 0 && i < j) {
      --j;
      left_j = j > i ? runs[j].n : left_i;
    }
  }
  if (i == j && left_i >= 2) max = std::max(max, 2 * runs[i].weight);  // the middle pairs itself
  return max;
}

double CountBound(std::span<const ReplicaRun> runs, int32_t R, int32_t slots, double total) {
  double bound = std::max(runs.empty() ? 0.0 : runs[0].weight, total / R);
  for (int32_t k = 1; k < slots; ++k) {
    // Items kR − k … kR (0-based, heaviest first).
    const int64_t first = static_cast<int64_t>(k) * R - k, last = static_cast<int64_t>(k) * R;
    double sum = 0;
    int64_t at = 0;
    for (const ReplicaRun& run : runs) {
      const int64_t begin = std::max(at, first), end = std::min(at + run.n - 1, last);
      if (begin <= end) sum += run.weight * static_cast<double>(end - begin + 1);
      at += run.n;
      if (at > last) break;
    }
    if (at > last) bound = std::max(bound, sum);
  }
  return bound;
}

bool EnumerateReplicaCounts(std::span<const double> load, int32_t P, int32_t cap,
                            absl::FunctionRef<double()> limit,
                            absl::FunctionRef<void(std::span<const int32_t>)> leaf,
                            int64_t max_steps) {
  const int32_t E = static_cast<int32_t>(load.size());
  std::vector<int32_t> order(E);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return load[a] > load[b]; });
  // cap + 1: no count qualifies.
  const auto fewest = [&](int32_t e) {
    if (load[e] <= 0) return 1;
    const double n = std::floor(load[e] / limit()) + 1;
    return n > cap ? cap + 1 : std::max(1, static_cast<int32_t>(n));
  };
  // The fewest replicas of order[i …] at the start: a lower bound on them later too, as the
  // limit only falls.
  std::vector<int32_t> fewest_after(E + 1, 0);
  for (int32_t i = E - 1; i >= 0; --i) fewest_after[i] = fewest_after[i + 1] + fewest(order[i]);
  std::vector<int32_t> count(E, 0);
  int64_t steps = 0;
  bool over = false;
  const auto descend = [&](auto&& self, int32_t i, int32_t left) -> void {
    if (++steps > max_steps) {
      over = true;
      return;
    }
    if (i == E) {
      if (left == 0) leaf(count);
      return;
    }
    const int32_t e = order[i];
    const int32_t most = std::min(cap, left - fewest_after[i + 1]);
    for (int32_t n = fewest(e); n <= most && !over; ++n) {
      if (i == E - 1 && n != left) continue;
      count[e] = n;
      self(self, i + 1, left - n);
    }
  };
  if (fewest_after[0] <= P) descend(descend, 0, P);
  return !over;
}

}  // namespace eplb
