// SmoothedLoad: the moving average of the per-(layer, expert) load of one deployment, fed with the
// token counts that ranks report for ranges of serving steps.
//
// Steps, not wall-clock time, are the time base: a report says which steps its counts were routed
// in, so a late or retried report lands where it belongs, and the result depends only on the set of
// reports added, not on the order in which they arrive.
#ifndef EPLB_CORE_SMOOTHED_LOAD_H_
#define EPLB_CORE_SMOOTHED_LOAD_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/load.h"

namespace eplb {

// How per-step load is smoothed. Steps (not wall clock) are the time base.
struct SmoothingOptions {
  static constexpr int64_t kMaxHalfLifeSteps = 1'000'000;
  static constexpr int64_t kMaxWindowSteps = 100'000;

  enum class Kind { kEma, kWindow };
  Kind kind = Kind::kEma;
  // kEma: a step's weight halves every half_life_steps steps. Range [1, 1'000'000].
  int64_t ema_half_life_steps = 1000;
  // kWindow: the mean over the last window_steps steps. Range [1, 100'000].
  int64_t window_steps = 1000;

  friend bool operator==(const SmoothingOptions&, const SmoothingOptions&) = default;
};

// OK, or INVALID_ARGUMENT naming the field used by `kind`, its value and its range, e.g.
// "ema_half_life_steps = 0 is out of range [1, 1000000]". The field `kind` does not use is ignored.
absl::Status ValidateSmoothingOptions(const SmoothingOptions& options);

// The smoothed per-(layer, expert) load of one deployment, in tokens per step.
//
// Let load_t[i] be the sum, over every report whose range [first, last] holds step t, of
// counts[i] / (last − first + 1): a report's counts are spread uniformly over its steps. With
// T = last_step() and F = first_step():
//
//   kEma, half-life h:  Current()[i] = Σ_{t=F..T} d^(T−t) · load_t[i] / Σ_{t=F..T} d^(T−t),
//                       d = 2^(−1/h). Contributions too old to matter may underflow to 0.
//   kWindow, W steps:   Current()[i] = Σ_{t=T−W+1..T} load_t[i] / min(W, T − F + 1).
//                       Memory is bounded: the load is kept in buckets of g = ⌈W / 64⌉ steps
//                       (bucket k holds steps [k·g, (k+1)·g)), at most ⌈W / g⌉ + 1 ≤ 65 of them.
//                       The oldest bucket, partly outside the window, is counted pro rata,
//                       assuming its load is uniform over its steps within [F, T]. The result is
//                       exact when W ≤ 64 (g = 1) or when every report starts at a multiple of g
//                       and ends just before one; otherwise its resolution is g steps. A report
//                       whose steps are all older than the window is ignored (apart from F),
//                       exactly as if it had arrived in order and been evicted since.
//
// The result depends only on the set of reports added (relative error < 1e-12 from float
// rounding). Memory is allocated once by Create(): L × E doubles for kEma, up to 65 × L × E for
// kWindow. Add() neither allocates nor makes more than one pass over the counts.
//
// Copyable and movable. Not thread-safe: the owner serialises calls.
class SmoothedLoad {
 public:
  // INVALID_ARGUMENT for options that ValidateSmoothingOptions() refuses, or a dimension out of
  // range ("num_layers = 0 is out of range [1, 4096]"; num_experts: [1, 65536]).
  static absl::StatusOr<SmoothedLoad> Create(int32_t num_layers, int32_t num_experts,
                                             const SmoothingOptions& options);

  // Adds counts (num_layers × num_experts, row-major) of tokens routed during steps
  // [first_step, last_step], spread uniformly over those steps. Counts of several ranks for the
  // same steps add up.
  // REQUIRES (checked with EPLB_CHECK; the caller validates input first):
  // 0 ≤ first_step ≤ last_step, counts.size() == L × E, every count finite and ≥ 0.
  void Add(int64_t first_step, int64_t last_step, std::span<const double> counts);
  // The same for layers first_layer … first_layer + counts.size() / E − 1 only (the others add
  // nothing), touching only those rows unless the report moves last_step() (the EMA then rescales
  // every row once). REQUIRES as Add, with counts.size() a positive multiple of E and the rows
  // within [0, L).
  void AddRows(int64_t first_step, int64_t last_step, int32_t first_layer,
               std::span<const double> counts);

  // The smoothed load in tokens per step at last_step(): L × E. All zeros when empty().
  LoadMatrix Current() const;
  // Same into a caller-owned buffer (resized), to avoid allocation in hot paths.
  void CurrentInto(LoadMatrix& out) const;

  bool empty() const { return empty_; }
  int64_t first_step() const { return first_step_; }  // smallest first_step added (0 when empty)
  int64_t last_step() const { return last_step_; }    // largest last_step added (0 when empty)
  int32_t num_layers() const { return num_layers_; }
  int32_t num_experts() const { return num_experts_; }
  const SmoothingOptions& options() const { return options_; }

  // A self-describing binary checkpoint, little endian: magic "EPLBSMLD", format version (u32),
  // options (kind u32, ema_half_life_steps i64, window_steps i64), num_layers and num_experts
  // (i32), empty (u8), first_step and last_step (i64), then unless empty the state: kEma the
  // L × E accumulator (f64); kWindow the bucket count (u32) and per bucket, oldest first, its
  // index (i64) and L × E values (f64).
  std::string Serialize() const;

  // Reads a checkpoint written by Serialize() for the given dimensions and options.
  // INVALID_ARGUMENT when the given dimensions or options are invalid (as Create()), or when the
  // checkpoint's differ from them ("checkpoint has num_layers = 3, expected 4"; of the options,
  // `kind` and the field it uses are compared). DATA_LOSS naming what is wrong when the bytes are
  // not a valid checkpoint: wrong magic, unknown format version, truncated or trailing data,
  // inconsistent steps or buckets, a value that is not finite and ≥ 0.
  static absl::StatusOr<SmoothedLoad> Restore(absl::string_view bytes, int32_t num_layers,
                                              int32_t num_experts, const SmoothingOptions& options);

 private:
  SmoothedLoad(int32_t num_layers, int32_t num_experts, const SmoothingOptions& options);

  size_t num_cells() const { return static_cast<size_t>(num_layers_) * num_experts_; }
  // kWindow: the oldest bucket that holds a step of the window ending at `last_step`.
  int64_t OldestBucket(int64_t last_step) const;
  // kWindow: the values of bucket `k`, which must be within the ring's reach.
  double* Bucket(int64_t k) {
    return values_.data() + static_cast<size_t>(k % num_buckets_) * num_cells();
  }
  const double* Bucket(int64_t k) const {
    return values_.data() + static_cast<size_t>(k % num_buckets_) * num_cells();
  }
  bool HoldsBucket(int64_t k) const { return bucket_ids_[k % num_buckets_] == k; }
  // `offset`: the first cell `counts` covers.
  void AddEma(int64_t first_step, int64_t last_step, size_t offset,
              std::span<const double> counts);
  void AddWindow(int64_t first_step, int64_t last_step, size_t offset,
                 std::span<const double> counts);

  int32_t num_layers_;
  int32_t num_experts_;
  SmoothingOptions options_;
  // kEma: ln d = −ln 2 / h and 1 − d.
  double log_decay_ = 0;
  double one_minus_decay_ = 0;
  // kWindow: g steps per bucket and the ring size ⌈W / g⌉ + 1.
  int64_t bucket_steps_ = 1;
  int64_t num_buckets_ = 1;

  bool empty_ = true;
  int64_t first_step_ = 0;
  int64_t last_step_ = 0;
  // kEma: A[i] = Σ_t load_t[i] · d^(T−t), referenced at T = last_step_ (L × E).
  // kWindow: the ring of buckets, bucket k in slot k mod num_buckets_ (num_buckets_ × L × E).
  std::vector<double> values_;
  // kWindow: which bucket each slot of the ring holds (−1: none). A slot holding a bucket older
  // than the window is ignored and cleared when it is reused.
  std::vector<int64_t> bucket_ids_;
};

}  // namespace eplb

#endif  // EPLB_CORE_SMOOTHED_LOAD_H_
