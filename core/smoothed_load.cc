#include "core/smoothed_load.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <limits>
#include <numbers>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "core/shape.h"
#include "core/status_macros.h"

namespace eplb {
namespace {

constexpr absl::string_view kMagic = "EPLBSMLD";
constexpr uint32_t kFormatVersion = 1;
// ⌈W / ⌈W / 64⌉⌉ ≤ 64, plus one bucket partly outside the window.
constexpr int64_t kMaxBuckets = 65;

absl::Status CheckRange(absl::string_view field, int64_t value, int64_t low, int64_t high) {
  if (value >= low && value <= high) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, " = ", value, " is out of range [", low, ", ", high, "]"));
}

const char* KindName(SmoothingOptions::Kind kind) {
  return kind == SmoothingOptions::Kind::kEma ? "ema" : "window";
}

bool IsValidCount(double c) { return c >= 0 && c <= std::numeric_limits<double>::max(); }

// Crashes naming the first count that breaks Add()'s contract, if any.
void CheckCounts(std::span<const double> counts) {
  for (size_t i = 0; i < counts.size(); ++i) {
    EPLB_CHECK(IsValidCount(counts[i]), "counts[", i, "] = ", counts[i], " is not finite and >= 0");
  }
}

// Little-endian encoding, independent of the host's byte order.
void AppendUint(std::string& out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}
void AppendDoubles(std::string& out, const double* values, size_t n) {
  for (size_t i = 0; i < n; ++i) AppendUint(out, std::bit_cast<uint64_t>(values[i]), 8);
}

absl::Status DataLoss(absl::string_view message) {
  return absl::DataLossError(absl::StrCat("smoothed load checkpoint: ", message));
}

// Reads the fields of a checkpoint in order; a read past the end is DATA_LOSS naming the field.
class CheckpointReader {
 public:
  // Reads `bytes` from offset `pos` on.
  CheckpointReader(absl::string_view bytes, size_t pos) : bytes_(bytes), pos_(pos) {}

  absl::StatusOr<uint64_t> Uint(int bytes, absl::string_view field) {
    RETURN_IF_ERROR(Need(bytes, field));
    uint64_t value = 0;
    for (int i = 0; i < bytes; ++i) {
      value |= static_cast<uint64_t>(static_cast<unsigned char>(bytes_[pos_ + i])) << (8 * i);
    }
    pos_ += bytes;
    return value;
  }
  absl::StatusOr<int64_t> Int64(absl::string_view field) {
    ASSIGN_OR_RETURN(uint64_t value, Uint(8, field));
    return static_cast<int64_t>(value);
  }
  absl::StatusOr<int32_t> Int32(absl::string_view field) {
    ASSIGN_OR_RETURN(uint64_t value, Uint(4, field));
    return static_cast<int32_t>(static_cast<uint32_t>(value));
  }
  // Reads n values, each of which must be finite and ≥ 0. `what` names them in errors, e.g.
  // "bucket 7": "value [0][3] of bucket 7 = nan is not finite and >= 0".
  absl::Status Values(double* out, int32_t num_experts, size_t n, absl::string_view what) {
    RETURN_IF_ERROR(Need(8 * n, absl::StrCat("the values", what.empty() ? "" : " of ", what)));
    for (size_t i = 0; i < n; ++i) {
      uint64_t bits = 0;
      for (int b = 0; b < 8; ++b) {
        bits |= static_cast<uint64_t>(static_cast<unsigned char>(bytes_[pos_ + b])) << (8 * b);
      }
      pos_ += 8;
      out[i] = std::bit_cast<double>(bits);
      if (!IsValidCount(out[i])) {
        return DataLoss(absl::StrCat("value [", i / num_experts, "][", i % num_experts, "]",
                                     what.empty() ? "" : " of ", what, " = ", out[i],
                                     " is not finite and >= 0"));
      }
    }
    return absl::OkStatus();
  }
  absl::Status ExpectEnd() const {
    if (pos_ == bytes_.size()) return absl::OkStatus();
    return DataLoss(
        absl::StrCat("trailing data: ", pos_, " bytes expected, ", bytes_.size(), " found"));
  }

 private:
  absl::Status Need(size_t n, absl::string_view field) const {
    if (bytes_.size() - pos_ >= n) return absl::OkStatus();
    return DataLoss(
        absl::StrCat("truncated: ", field, " would end at byte ", pos_ + n, " of ", bytes_.size()));
  }

  absl::string_view bytes_;
  size_t pos_;
};

}  // namespace

absl::Status ValidateSmoothingOptions(const SmoothingOptions& options) {
  switch (options.kind) {
    case SmoothingOptions::Kind::kEma:
      return CheckRange("ema_half_life_steps", options.ema_half_life_steps, 1,
                        SmoothingOptions::kMaxHalfLifeSteps);
    case SmoothingOptions::Kind::kWindow:
      return CheckRange("window_steps", options.window_steps, 1, SmoothingOptions::kMaxWindowSteps);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("kind = ", static_cast<int>(options.kind), " is not a smoothing kind"));
}

SmoothedLoad::SmoothedLoad(int32_t num_layers, int32_t num_experts, const SmoothingOptions& options)
    : num_layers_(num_layers), num_experts_(num_experts), options_(options) {
  if (options.kind == SmoothingOptions::Kind::kEma) {
    log_decay_ = -std::numbers::ln2 / static_cast<double>(options.ema_half_life_steps);
    one_minus_decay_ = -std::expm1(log_decay_);
    values_.assign(num_cells(), 0.0);
  } else {
    const int64_t w = options.window_steps;
    bucket_steps_ = (w + 63) / 64;
    num_buckets_ = (w + bucket_steps_ - 1) / bucket_steps_ + 1;
    EPLB_CHECK(num_buckets_ <= kMaxBuckets, "window_steps = ", w);
    values_.assign(static_cast<size_t>(num_buckets_) * num_cells(), 0.0);
    bucket_ids_.assign(num_buckets_, -1);
  }
}

absl::StatusOr<SmoothedLoad> SmoothedLoad::Create(int32_t num_layers, int32_t num_experts,
                                                  const SmoothingOptions& options) {
  RETURN_IF_ERROR(CheckRange("num_layers", num_layers, 1, ShapeLimits::kMaxLayers));
  RETURN_IF_ERROR(CheckRange("num_experts", num_experts, 1, ShapeLimits::kMaxLogicalExperts));
  RETURN_IF_ERROR(ValidateSmoothingOptions(options));
  return SmoothedLoad(num_layers, num_experts, options);
}

int64_t SmoothedLoad::OldestBucket(int64_t last_step) const {
  const int64_t window_first = last_step - options_.window_steps + 1;
  return window_first <= 0 ? 0 : window_first / bucket_steps_;
}

void SmoothedLoad::Add(int64_t first_step, int64_t last_step, std::span<const double> counts) {
  EPLB_CHECK(counts.size() == num_cells(), "counts.size() = ", counts.size(), ", expected ",
             num_layers_, " × ", num_experts_);
  AddRows(first_step, last_step, 0, counts);
}

void SmoothedLoad::AddRows(int64_t first_step, int64_t last_step, int32_t first_layer,
                           std::span<const double> counts) {
  EPLB_CHECK(0 <= first_step && first_step <= last_step, "steps [", first_step, ", ", last_step,
             "]");
  const size_t row = static_cast<size_t>(num_experts_);
  EPLB_CHECK(first_layer >= 0 && !counts.empty() && counts.size() % row == 0 &&
                 static_cast<size_t>(first_layer) + counts.size() / row <=
                     static_cast<size_t>(num_layers_),
             "counts of ", counts.size(), " cells from layer ", first_layer, " for ", num_layers_,
             " × ", num_experts_);
  const size_t offset = static_cast<size_t>(first_layer) * row;
  if (options_.kind == SmoothingOptions::Kind::kEma) {
    AddEma(first_step, last_step, offset, counts);
  } else {
    AddWindow(first_step, last_step, offset, counts);
  }
  first_step_ = empty_ ? first_step : std::min(first_step_, first_step);
  last_step_ = empty_ ? last_step : std::max(last_step_, last_step);
  empty_ = false;
}

void SmoothedLoad::AddEma(int64_t first_step, int64_t last_step, size_t offset,
                          std::span<const double> counts) {
  // Existing contributions are referenced at T = last_step_; a newer report moves T to its end.
  double rebase = 1.0;
  int64_t reference = last_step;
  if (!empty_) {
    if (last_step > last_step_) {
      rebase = std::exp(static_cast<double>(last_step - last_step_) * log_decay_);
    } else {
      reference = last_step_;
    }
  }
  // Σ_{t=a..b} (c / n) · d^(T−t) = (c / n) · d^(T−b) · (1 − d^n) / (1 − d).
  const double n = static_cast<double>(last_step - first_step) + 1;
  const double scale = std::exp(static_cast<double>(reference - last_step) * log_decay_) *
                       (-std::expm1(n * log_decay_) / one_minus_decay_) / n;
  if (rebase != 1.0) {  // the rows outside the report's move to the new reference too
    for (size_t i = 0; i < offset; ++i) values_[i] *= rebase;
    for (size_t i = offset + counts.size(); i < values_.size(); ++i) values_[i] *= rebase;
  }
  double* acc = values_.data() + offset;
  bool valid = true;
  for (size_t i = 0; i < counts.size(); ++i) {
    const double c = counts[i];
    valid &= IsValidCount(c);
    acc[i] = acc[i] * rebase + c * scale;
  }
  if (!valid) CheckCounts(counts);
}

void SmoothedLoad::AddWindow(int64_t first_step, int64_t last_step, size_t offset,
                             std::span<const double> counts) {
  const int64_t g = bucket_steps_;
  const int64_t end = empty_ ? last_step : std::max(last_step_, last_step);
  const int64_t first_bucket = std::max(first_step / g, OldestBucket(end));
  const int64_t last_bucket = last_step / g;
  if (first_bucket > last_bucket) {  // every step is older than the window
    CheckCounts(counts);
    return;
  }
  // The share of the report's steps that falls in each bucket it touches.
  std::array<double*, kMaxBuckets> targets;
  std::array<double, kMaxBuckets> shares;
  const double n = static_cast<double>(last_step - first_step) + 1;
  int num_targets = 0;
  for (int64_t k = first_bucket; k <= last_bucket; ++k) {
    int64_t& id = bucket_ids_[k % num_buckets_];
    if (id != k) {  // the slot holds an evicted bucket (or none): reuse it
      EPLB_CHECK(id < k, "bucket ", id, " is newer than bucket ", k);
      std::fill_n(Bucket(k), num_cells(), 0.0);
      id = k;
    }
    const int64_t begin = std::max(first_step, k * g);
    const int64_t last = k * g + std::min(g - 1, last_step - k * g);
    targets[num_targets] = Bucket(k) + offset;
    shares[num_targets] = static_cast<double>(last - begin + 1) / n;
    ++num_targets;
  }
  bool valid = true;
  if (num_targets == 1) {
    double* target = targets[0];
    const double share = shares[0];
    for (size_t i = 0; i < counts.size(); ++i) {
      valid &= IsValidCount(counts[i]);
      target[i] += counts[i] * share;
    }
  } else {
    for (size_t i = 0; i < counts.size(); ++i) {
      const double c = counts[i];
      valid &= IsValidCount(c);
      for (int j = 0; j < num_targets; ++j) targets[j][i] += c * shares[j];
    }
  }
  if (!valid) CheckCounts(counts);
}

LoadMatrix SmoothedLoad::Current() const {
  LoadMatrix out;
  CurrentInto(out);
  return out;
}

void SmoothedLoad::CurrentInto(LoadMatrix& out) const {
  out.num_layers = num_layers_;
  out.num_experts = num_experts_;
  out.values.assign(num_cells(), 0.0);
  if (empty_) return;
  const int64_t span_steps = last_step_ - first_step_ + 1;
  if (options_.kind == SmoothingOptions::Kind::kEma) {
    // Divide by Σ_{t=F..T} d^(T−t) = (1 − d^(T−F+1)) / (1 − d).
    const double scale =
        one_minus_decay_ / -std::expm1(static_cast<double>(span_steps) * log_decay_);
    for (size_t i = 0; i < out.values.size(); ++i) out.values[i] = values_[i] * scale;
    return;
  }
  const int64_t g = bucket_steps_;
  const int64_t window_first = last_step_ - options_.window_steps + 1;
  const double divisor = static_cast<double>(std::min(options_.window_steps, span_steps));
  const int64_t oldest = OldestBucket(last_step_);
  for (int64_t k = oldest; k <= last_step_ / g; ++k) {
    if (!HoldsBucket(k)) continue;
    double weight = 1.0;
    // The oldest bucket's load lies in [max(k·g, F), min(k·g + g − 1, T)]; count the part of that
    // span inside the window, assuming the load is uniform over it.
    const int64_t begin = std::max(k * g, first_step_);
    const int64_t last = std::min(k * g + g - 1, last_step_);
    if (begin < window_first) {
      weight = static_cast<double>(last - window_first + 1) / static_cast<double>(last - begin + 1);
    }
    const double scale = weight / divisor;
    const double* bucket = Bucket(k);
    for (size_t i = 0; i < out.values.size(); ++i) out.values[i] += bucket[i] * scale;
  }
}

std::string SmoothedLoad::Serialize() const {
  std::string out(kMagic);
  AppendUint(out, kFormatVersion, 4);
  AppendUint(out, static_cast<uint32_t>(options_.kind), 4);
  AppendUint(out, static_cast<uint64_t>(options_.ema_half_life_steps), 8);
  AppendUint(out, static_cast<uint64_t>(options_.window_steps), 8);
  AppendUint(out, static_cast<uint32_t>(num_layers_), 4);
  AppendUint(out, static_cast<uint32_t>(num_experts_), 4);
  AppendUint(out, empty_ ? 1 : 0, 1);
  AppendUint(out, static_cast<uint64_t>(first_step_), 8);
  AppendUint(out, static_cast<uint64_t>(last_step_), 8);
  if (empty_) return out;
  if (options_.kind == SmoothingOptions::Kind::kEma) {
    AppendDoubles(out, values_.data(), num_cells());
    return out;
  }
  const int64_t oldest = OldestBucket(last_step_);
  const int64_t newest = last_step_ / bucket_steps_;
  uint32_t count = 0;
  for (int64_t k = oldest; k <= newest; ++k) count += HoldsBucket(k) ? 1 : 0;
  AppendUint(out, count, 4);
  for (int64_t k = oldest; k <= newest; ++k) {
    if (!HoldsBucket(k)) continue;
    AppendUint(out, static_cast<uint64_t>(k), 8);
    AppendDoubles(out, Bucket(k), num_cells());
  }
  return out;
}

absl::StatusOr<SmoothedLoad> SmoothedLoad::Restore(absl::string_view bytes, int32_t num_layers,
                                                   int32_t num_experts,
                                                   const SmoothingOptions& options) {
  ASSIGN_OR_RETURN(SmoothedLoad load, Create(num_layers, num_experts, options));
  if (bytes.substr(0, kMagic.size()) != kMagic) {
    return DataLoss("wrong magic: not a smoothed load checkpoint");
  }
  CheckpointReader reader(bytes, kMagic.size());
  ASSIGN_OR_RETURN(const uint64_t version, reader.Uint(4, "format_version"));
  if (version != kFormatVersion) {
    return DataLoss(absl::StrCat("format version ", version, " is not supported (expected ",
                                 kFormatVersion, ")"));
  }
  const auto mismatch = [](absl::string_view field, const auto& value, const auto& expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint has ", field, " = ", value, ", expected ", expected));
  };
  ASSIGN_OR_RETURN(const uint64_t kind, reader.Uint(4, "kind"));
  if (kind > static_cast<uint32_t>(SmoothingOptions::Kind::kWindow)) {
    return DataLoss(absl::StrCat("kind = ", kind, " is not a smoothing kind"));
  }
  const auto checkpoint_kind = static_cast<SmoothingOptions::Kind>(kind);
  if (checkpoint_kind != options.kind) {
    return mismatch("kind", KindName(checkpoint_kind), KindName(options.kind));
  }
  ASSIGN_OR_RETURN(const int64_t half_life, reader.Int64("ema_half_life_steps"));
  ASSIGN_OR_RETURN(const int64_t window, reader.Int64("window_steps"));
  if (options.kind == SmoothingOptions::Kind::kEma && half_life != options.ema_half_life_steps) {
    return mismatch("ema_half_life_steps", half_life, options.ema_half_life_steps);
  }
  if (options.kind == SmoothingOptions::Kind::kWindow && window != options.window_steps) {
    return mismatch("window_steps", window, options.window_steps);
  }
  ASSIGN_OR_RETURN(const int32_t layers, reader.Int32("num_layers"));
  if (layers != num_layers) return mismatch("num_layers", layers, num_layers);
  ASSIGN_OR_RETURN(const int32_t experts, reader.Int32("num_experts"));
  if (experts != num_experts) return mismatch("num_experts", experts, num_experts);

  ASSIGN_OR_RETURN(const uint64_t empty, reader.Uint(1, "empty"));
  ASSIGN_OR_RETURN(const int64_t first_step, reader.Int64("first_step"));
  ASSIGN_OR_RETURN(const int64_t last_step, reader.Int64("last_step"));
  if (empty > 1) return DataLoss(absl::StrCat("empty = ", empty, " is not 0 or 1"));
  if (empty == 1) {
    if (first_step != 0 || last_step != 0) {
      return DataLoss(absl::StrCat("an empty load has steps [", first_step, ", ", last_step,
                                   "], expected [0, 0]"));
    }
    RETURN_IF_ERROR(reader.ExpectEnd());
    return load;
  }
  if (first_step < 0 || first_step > last_step) {
    return DataLoss(
        absl::StrCat("steps [", first_step, ", ", last_step, "] are not 0 <= first <= last"));
  }
  load.empty_ = false;
  load.first_step_ = first_step;
  load.last_step_ = last_step;
  if (options.kind == SmoothingOptions::Kind::kEma) {
    RETURN_IF_ERROR(reader.Values(load.values_.data(), num_experts, load.num_cells(), ""));
    RETURN_IF_ERROR(reader.ExpectEnd());
    return load;
  }
  ASSIGN_OR_RETURN(const uint64_t count, reader.Uint(4, "bucket count"));
  if (count > static_cast<uint64_t>(load.num_buckets_)) {
    return DataLoss(absl::StrCat("bucket count ", count, " is more than the ", load.num_buckets_,
                                 " of window_steps = ", window));
  }
  const int64_t oldest = load.OldestBucket(last_step);
  const int64_t newest = last_step / load.bucket_steps_;
  int64_t previous = oldest - 1;
  for (uint64_t b = 0; b < count; ++b) {
    ASSIGN_OR_RETURN(const int64_t k, reader.Int64(absl::StrCat("the index of bucket ", b)));
    if (k <= previous || k > newest) {
      return DataLoss(absl::StrCat("bucket ", b, " has index ", k, ", expected one in [",
                                   previous + 1, ", ", newest, "]"));
    }
    previous = k;
    load.bucket_ids_[k % load.num_buckets_] = k;
    RETURN_IF_ERROR(
        reader.Values(load.Bucket(k), num_experts, load.num_cells(), absl::StrCat("bucket ", k)));
  }
  RETURN_IF_ERROR(reader.ExpectEnd());
  return load;
}

}  // namespace eplb
