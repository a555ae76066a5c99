#include "core/smoothed_load.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace eplb {
namespace {

using ::testing::ElementsAre;

SmoothingOptions Ema(int64_t half_life_steps) {
  return {.kind = SmoothingOptions::Kind::kEma, .ema_half_life_steps = half_life_steps};
}
SmoothingOptions Window(int64_t window_steps) {
  return {.kind = SmoothingOptions::Kind::kWindow, .window_steps = window_steps};
}

SmoothedLoad Make(int32_t layers, int32_t experts, const SmoothingOptions& options) {
  auto load = SmoothedLoad::Create(layers, experts, options);
  EXPECT_TRUE(load.ok()) << load.status();
  return *std::move(load);
}

// |actual − expected| ≤ relative · max(|actual|, |expected|), element by element.
void ExpectClose(const std::vector<double>& actual, const std::vector<double>& expected,
                 double relative = 1e-12) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i) {
    const double bound = relative * std::max(std::abs(actual[i]), std::abs(expected[i]));
    EXPECT_LE(std::abs(actual[i] - expected[i]), bound)
        << "[" << i << "]: " << actual[i] << " vs " << expected[i];
  }
}

struct Report {
  int64_t first_step;
  int64_t last_step;
  std::vector<double> counts;
};

// Random ranges in [0, max_step]: a third single steps, the rest up to max_step / 10 long; they
// overlap, and in random order many arrive late.
std::vector<Report> RandomReports(std::mt19937_64& rng, int n, int64_t max_step, int cells) {
  std::uniform_int_distribution<int64_t> step(0, max_step);
  std::uniform_int_distribution<int64_t> length(1, std::max<int64_t>(1, max_step / 10));
  std::uniform_real_distribution<double> count(0, 100);
  std::vector<Report> reports;
  for (int r = 0; r < n; ++r) {
    Report report;
    report.first_step = step(rng);
    report.last_step = report.first_step + (r % 3 == 0 ? 0 : length(rng) - 1);
    for (int i = 0; i < cells; ++i) report.counts.push_back(count(rng));
    reports.push_back(std::move(report));
  }
  return reports;
}

SmoothedLoad AddAll(int32_t layers, int32_t experts, const SmoothingOptions& options,
                    const std::vector<Report>& reports) {
  SmoothedLoad load = Make(layers, experts, options);
  for (const Report& r : reports) load.Add(r.first_step, r.last_step, r.counts);
  return load;
}

// load_t[i] for t in [0, T], straight from the definition: (T + 1) × cells.
std::vector<std::vector<double>> PerStepLoad(const std::vector<Report>& reports, int64_t last) {
  std::vector<std::vector<double>> per_step(last + 1,
                                            std::vector<double>(reports[0].counts.size(), 0.0));
  for (const Report& r : reports) {
    const double n = static_cast<double>(r.last_step - r.first_step + 1);
    for (int64_t t = r.first_step; t <= r.last_step; ++t) {
      for (size_t i = 0; i < r.counts.size(); ++i) per_step[t][i] += r.counts[i] / n;
    }
  }
  return per_step;
}

TEST(SmoothedLoadEmaTest, SingleStepsWithHalfLifeOne) {
  // h = 1: the weights of steps T, T−1, T−2 are 1, 1/2, 1/4; their sum is 1.75.
  SmoothedLoad load = Make(1, 2, Ema(1));
  EXPECT_TRUE(load.empty());
  EXPECT_THAT(load.Current().values, ElementsAre(0, 0));
  load.Add(0, 0, std::vector<double>{8, 0});
  ExpectClose(load.Current().values, {8, 0});
  load.Add(1, 1, std::vector<double>{4, 2});
  // (4 + 8/2) / 1.5 and (2 + 0) / 1.5.
  ExpectClose(load.Current().values, {16.0 / 3, 4.0 / 3});
  load.Add(2, 2, std::vector<double>{2, 4});
  // (2 + 4/2 + 8/4) / 1.75 = 24/7 and (4 + 2/2 + 0) / 1.75 = 20/7.
  ExpectClose(load.Current().values, {24.0 / 7, 20.0 / 7});
  EXPECT_FALSE(load.empty());
  EXPECT_EQ(load.first_step(), 0);
  EXPECT_EQ(load.last_step(), 2);
}

TEST(SmoothedLoadEmaTest, RangesSpreadUniformlyAndLateReportsLandInPlace) {
  // 16 tokens over steps 0..3 is 4 per step; 10 at step 4. h = 1, T = 4:
  // (10 + 4 · (1/2 + 1/4 + 1/8 + 1/16)) / (1 + 15/16) = 13.75 / (31/16) = 220/31.
  SmoothedLoad in_order = Make(1, 1, Ema(1));
  in_order.Add(0, 3, std::vector<double>{16});
  ExpectClose(in_order.Current().values, {4});
  in_order.Add(4, 4, std::vector<double>{10});
  ExpectClose(in_order.Current().values, {220.0 / 31});

  SmoothedLoad late = Make(1, 1, Ema(1));
  late.Add(4, 4, std::vector<double>{10});
  late.Add(0, 3, std::vector<double>{16});
  ExpectClose(late.Current().values, {220.0 / 31});
  EXPECT_EQ(late.first_step(), 0);
  EXPECT_EQ(late.last_step(), 4);
}

TEST(SmoothedLoadEmaTest, StepsWithoutReportsCountAsZeroLoad) {
  // h = 2, d = 2^(−1/2): 1 token at step 0, none at 1 and 2. T = 2: d² / (1 + d + d²).
  SmoothedLoad load = Make(1, 1, Ema(2));
  load.Add(0, 0, std::vector<double>{1});
  load.Add(2, 2, std::vector<double>{0});
  const double d = std::sqrt(0.5);
  ExpectClose(load.Current().values, {0.5 / (1 + d + 0.5)});
}

TEST(SmoothedLoadEmaTest, MatchesTheDefinitionOnRandomReports) {
  std::mt19937_64 rng(7);
  for (int64_t h : {1, 10, 1000, 1'000'000}) {
    const std::vector<Report> reports = RandomReports(rng, 50, 2000, 6);
    const SmoothedLoad load = AddAll(2, 3, Ema(h), reports);
    const auto per_step = PerStepLoad(reports, load.last_step());
    const double d = std::pow(2.0, -1.0 / static_cast<double>(h));
    std::vector<double> expected(6, 0.0);
    double weights = 0;
    for (int64_t t = load.first_step(); t <= load.last_step(); ++t) {
      const double w = std::pow(d, static_cast<double>(load.last_step() - t));
      weights += w;
      for (int i = 0; i < 6; ++i) expected[i] += w * per_step[t][i];
    }
    for (double& v : expected) v /= weights;
    SCOPED_TRACE(h);
    ExpectClose(load.Current().values, expected, 1e-9);
  }
}

TEST(SmoothedLoadWindowTest, ExactPerStepForSmallWindows) {
  SmoothedLoad load = Make(1, 1, Window(3));
  load.Add(0, 0, std::vector<double>{3});
  load.Add(1, 1, std::vector<double>{6});
  ExpectClose(load.Current().values, {(3.0 + 6) / 2});  // only 2 steps seen so far
  load.Add(2, 2, std::vector<double>{9});
  load.Add(3, 3, std::vector<double>{12});
  ExpectClose(load.Current().values, {(6.0 + 9 + 12) / 3});  // steps 1..3
}

TEST(SmoothedLoadWindowTest, RangesAndLateReportsWithSmallWindow) {
  SmoothedLoad load = Make(1, 1, Window(2));
  load.Add(0, 3, std::vector<double>{8});  // 2 per step at steps 0..3
  ExpectClose(load.Current().values, {2});
  load.Add(4, 5, std::vector<double>{20});  // 10 per step at steps 4, 5
  ExpectClose(load.Current().values, {10});
  load.Add(3, 4, std::vector<double>{6});  // late: 3 at step 3 (outside), 3 at step 4
  ExpectClose(load.Current().values, {(13.0 + 10) / 2});
}

TEST(SmoothedLoadWindowTest, AlignedReportsAreExactWithBuckets) {
  // W = 128: buckets of g = 2 steps. Reports start at even steps and end at odd ones.
  SmoothedLoad load = Make(1, 1, Window(128));
  load.Add(0, 63, std::vector<double>{64});     // 1 per step
  load.Add(64, 127, std::vector<double>{128});  // 2 per step
  ExpectClose(load.Current().values, {(64.0 + 128) / 128});
  load.Add(128, 191, std::vector<double>{192});  // 3 per step; the window is steps 64..191
  ExpectClose(load.Current().values, {(2.0 * 64 + 3 * 64) / 128});
  load.Add(192, 193, std::vector<double>{10});  // steps 66..193
  ExpectClose(load.Current().values, {(2.0 * 62 + 3 * 64 + 10) / 128});
}

TEST(SmoothedLoadWindowTest, OldestBucketCountsProRata) {
  // W = 128, g = 2: bucket 0 holds steps 0 and 1; at T = 128 the window is steps 1..128.
  SmoothedLoad single = Make(1, 1, Window(128));
  single.Add(0, 0, std::vector<double>{4});
  single.Add(128, 128, std::vector<double>{0});
  // Step 0 is outside the window, but bucket 0 is taken as uniform over steps 0 and 1: half of its
  // 4 tokens count. This is the resolution of g steps.
  ExpectClose(single.Current().values, {2.0 / 128});

  SmoothedLoad aligned = Make(1, 1, Window(128));
  aligned.Add(0, 1, std::vector<double>{4});  // 2 at step 0, 2 at step 1: exact
  aligned.Add(128, 128, std::vector<double>{0});
  ExpectClose(aligned.Current().values, {2.0 / 128});

  // With F = 1 inside bucket 0, the bucket's load lies in steps [1, 1]: all of it counts.
  SmoothedLoad from_one = Make(1, 1, Window(128));
  from_one.Add(1, 1, std::vector<double>{4});
  from_one.Add(128, 128, std::vector<double>{0});
  ExpectClose(from_one.Current().values, {4.0 / 128});
}

TEST(SmoothedLoadWindowTest, DividesByStepsSeenWhenFewerThanTheWindow) {
  SmoothedLoad load = Make(1, 1, Window(128));
  load.Add(10, 19, std::vector<double>{20});  // F = 10, T = 19: 10 steps
  ExpectClose(load.Current().values, {2});
}

TEST(SmoothedLoadWindowTest, MatchesTheDefinitionOnRandomReports) {
  std::mt19937_64 rng(11);
  // Exact per step for W ≤ 64; exact with buckets when reports are aligned to g.
  for (const auto& [window, align] :
       {std::pair<int64_t, int64_t>{1, 1}, {5, 1}, {64, 1}, {128, 2}, {1000, 16}}) {
    std::vector<Report> reports = RandomReports(rng, 50, 3 * window + 20, 6);
    for (Report& r : reports) {
      r.first_step -= r.first_step % align;
      r.last_step += align - 1 - r.last_step % align;
    }
    const SmoothedLoad load = AddAll(2, 3, Window(window), reports);
    const auto per_step = PerStepLoad(reports, load.last_step());
    std::vector<double> expected(6, 0.0);
    const int64_t from = std::max(load.first_step(), load.last_step() - window + 1);
    for (int64_t t = from; t <= load.last_step(); ++t) {
      for (int i = 0; i < 6; ++i) expected[i] += per_step[t][i];
    }
    for (double& v : expected) v /= static_cast<double>(load.last_step() - from + 1);
    SCOPED_TRACE(window);
    ExpectClose(load.Current().values, expected, 1e-9);
  }
}

TEST(SmoothedLoadWindowTest, ReportsOlderThanTheWindowAreIgnoredInAnyOrder) {
  for (const auto& [window, old_last, new_step] :
       {std::tuple<int64_t, int64_t, int64_t>{4, 0, 10}, {1000, 15, 2000}}) {
    SCOPED_TRACE(window);
    const Report old_report{0, old_last, {100}};
    const Report new_report{new_step, new_step, {8}};
    const SmoothedLoad in_order = AddAll(1, 1, Window(window), {old_report, new_report});
    const SmoothedLoad late = AddAll(1, 1, Window(window), {new_report, old_report});
    ExpectClose(in_order.Current().values, {8.0 / static_cast<double>(window)});
    EXPECT_EQ(late.Current(), in_order.Current());
    EXPECT_EQ(late.first_step(), 0);
    EXPECT_EQ(late.last_step(), new_step);
  }
}

TEST(SmoothedLoadWindowTest, RingSlotsAreReused) {
  // W = 4 keeps 5 buckets of 1 step: bucket 5 reuses the slot of bucket 0.
  SmoothedLoad load = Make(1, 1, Window(4));
  load.Add(0, 0, std::vector<double>{100});
  load.Add(5, 5, std::vector<double>{4});
  ExpectClose(load.Current().values, {1});
  load.Add(1, 1, std::vector<double>{100});  // older than the window 2..5
  load.Add(6, 6, std::vector<double>{8});
  ExpectClose(load.Current().values, {3});  // (4 + 8) / 4
}

TEST(SmoothedLoadTest, RanksReportingTheSameStepsAddUp) {
  for (const SmoothingOptions& options : {Ema(3), Window(4), Window(1000)}) {
    SmoothedLoad ranks = Make(1, 2, options);
    ranks.Add(0, 3, std::vector<double>{4, 8});
    ranks.Add(0, 3, std::vector<double>{4, 0});
    ranks.Add(4, 4, std::vector<double>{1, 0});
    ranks.Add(4, 4, std::vector<double>{1, 2});
    SmoothedLoad total = Make(1, 2, options);
    total.Add(0, 3, std::vector<double>{8, 8});
    total.Add(4, 4, std::vector<double>{2, 2});
    ExpectClose(ranks.Current().values, total.Current().values);
  }
  SmoothedLoad window = Make(1, 2, Window(4));
  window.Add(0, 3, std::vector<double>{4, 8});
  window.Add(0, 3, std::vector<double>{4, 0});
  ExpectClose(window.Current().values, {2, 2});
}

TEST(SmoothedLoadTest, OrderDoesNotMatter) {
  std::mt19937_64 rng(42);
  for (const SmoothingOptions& options : {Ema(3), Ema(1000), Ema(1'000'000), Window(1), Window(7),
                                          Window(64), Window(1000), Window(100'000)}) {
    for (int64_t max_step : {3000, 300'000}) {
      SCOPED_TRACE(testing::Message()
                   << (options.kind == SmoothingOptions::Kind::kEma ? "ema " : "window ")
                   << options.ema_half_life_steps << "/" << options.window_steps << " max_step "
                   << max_step);
      std::vector<Report> reports = RandomReports(rng, 50, max_step, 6);
      const SmoothedLoad reference = AddAll(2, 3, options, reports);
      for (int shuffle = 0; shuffle < 5; ++shuffle) {
        std::shuffle(reports.begin(), reports.end(), rng);
        const SmoothedLoad shuffled = AddAll(2, 3, options, reports);
        EXPECT_EQ(shuffled.first_step(), reference.first_step());
        EXPECT_EQ(shuffled.last_step(), reference.last_step());
        ExpectClose(shuffled.Current().values, reference.Current().values);
      }
    }
  }
}

// Reports split over layer ranges (AddRows, in any order of parts and steps) give what the whole
// reports give, for both kinds.
TEST(SmoothedLoadTest, ReportsSplitOverLayerRangesAddUpToTheWhole) {
  constexpr int32_t kLayers = 5, kExperts = 3;
  std::mt19937_64 rng(11);
  for (const SmoothingOptions& options : {Ema(50), Window(10), Window(500)}) {
    const std::vector<Report> reports = RandomReports(rng, 40, 1000, kLayers * kExperts);
    const SmoothedLoad whole = AddAll(kLayers, kExperts, options, reports);
    SmoothedLoad parts = Make(kLayers, kExperts, options);
    for (const Report& r : reports) {
      // Layers [0, 2), [2, 3), [3, 5), last part first.
      for (const auto& [first, count] : {std::pair{3, 2}, {0, 2}, {2, 1}}) {
        parts.AddRows(r.first_step, r.last_step, first,
                      std::span<const double>(r.counts).subspan(first * kExperts,
                                                                count * kExperts));
      }
    }
    EXPECT_EQ(parts.first_step(), whole.first_step());
    EXPECT_EQ(parts.last_step(), whole.last_step());
    ExpectClose(parts.Current().values, whole.Current().values, 1e-12);
  }
}

TEST(SmoothedLoadTest, CurrentIntoResizes) {
  SmoothedLoad load = Make(2, 3, Ema(10));
  load.Add(0, 0, std::vector<double>{1, 2, 3, 4, 5, 6});
  LoadMatrix out{.num_layers = 7, .num_experts = 1, .values = {9}};
  load.CurrentInto(out);
  EXPECT_EQ(out, load.Current());
  EXPECT_EQ(out.num_layers, 2);
  EXPECT_EQ(out.num_experts, 3);
  ExpectClose(out.values, {1, 2, 3, 4, 5, 6});
}

TEST(SmoothedLoadOptionsTest, RangesAreChecked) {
  const auto message = [](const SmoothingOptions& options) {
    return std::string(ValidateSmoothingOptions(options).message());
  };
  EXPECT_EQ(message(Ema(0)), "ema_half_life_steps = 0 is out of range [1, 1000000]");
  EXPECT_EQ(message(Ema(-3)), "ema_half_life_steps = -3 is out of range [1, 1000000]");
  EXPECT_EQ(message(Ema(1'000'001)), "ema_half_life_steps = 1000001 is out of range [1, 1000000]");
  EXPECT_EQ(message(Window(0)), "window_steps = 0 is out of range [1, 100000]");
  EXPECT_EQ(message(Window(-1)), "window_steps = -1 is out of range [1, 100000]");
  EXPECT_EQ(message(Window(100'001)), "window_steps = 100001 is out of range [1, 100000]");
  EXPECT_EQ(ValidateSmoothingOptions(Ema(0)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ValidateSmoothingOptions(Ema(1)).ok());
  EXPECT_TRUE(ValidateSmoothingOptions(Ema(1'000'000)).ok());
  EXPECT_TRUE(ValidateSmoothingOptions(Window(1)).ok());
  EXPECT_TRUE(ValidateSmoothingOptions(Window(100'000)).ok());
  // The field the kind does not use is ignored.
  EXPECT_TRUE(
      ValidateSmoothingOptions(
          {.kind = SmoothingOptions::Kind::kEma, .ema_half_life_steps = 5, .window_steps = 0})
          .ok());
  EXPECT_TRUE(
      ValidateSmoothingOptions(
          {.kind = SmoothingOptions::Kind::kWindow, .ema_half_life_steps = -1, .window_steps = 5})
          .ok());
}

TEST(SmoothedLoadOptionsTest, CreateChecksDimensionsAndOptions) {
  const auto message = [](int32_t layers, int32_t experts, const SmoothingOptions& options) {
    auto load = SmoothedLoad::Create(layers, experts, options);
    EXPECT_EQ(load.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(load.status().message());
  };
  EXPECT_EQ(message(0, 4, Ema(1)), "num_layers = 0 is out of range [1, 4096]");
  EXPECT_EQ(message(-2, 4, Ema(1)), "num_layers = -2 is out of range [1, 4096]");
  EXPECT_EQ(message(4097, 4, Ema(1)), "num_layers = 4097 is out of range [1, 4096]");
  EXPECT_EQ(message(1, 0, Ema(1)), "num_experts = 0 is out of range [1, 65536]");
  EXPECT_EQ(message(1, 65537, Ema(1)), "num_experts = 65537 is out of range [1, 65536]");
  EXPECT_EQ(message(1, 1, Window(0)), "window_steps = 0 is out of range [1, 100000]");
  const SmoothedLoad load = Make(58, 256, Window(100));
  EXPECT_EQ(load.num_layers(), 58);
  EXPECT_EQ(load.num_experts(), 256);
  EXPECT_EQ(load.options(), Window(100));
}

// Byte offsets of the checkpoint format (see Serialize()).
constexpr size_t kVersionOffset = 8;
constexpr size_t kFirstStepOffset = 41;
constexpr size_t kStateOffset = 57;

void PutUint64(std::string& bytes, size_t offset, uint64_t value) {
  for (int i = 0; i < 8; ++i) bytes[offset + i] = static_cast<char>((value >> (8 * i)) & 0xff);
}

absl::Status RestoreStatus(const std::string& bytes, int32_t layers, int32_t experts,
                           const SmoothingOptions& options) {
  return SmoothedLoad::Restore(bytes, layers, experts, options).status();
}

TEST(SmoothedLoadCheckpointTest, RoundTripAndContinue) {
  std::mt19937_64 rng(3);
  for (const SmoothingOptions& options : {Ema(50), Ema(1'000'000), Window(7), Window(1000)}) {
    SCOPED_TRACE(options.kind == SmoothingOptions::Kind::kEma ? "ema" : "window");
    const std::vector<Report> before = RandomReports(rng, 30, 5000, 6);
    const std::vector<Report> after = RandomReports(rng, 30, 6000, 6);
    SmoothedLoad original = AddAll(2, 3, options, before);
    auto restored = SmoothedLoad::Restore(original.Serialize(), 2, 3, options);
    ASSERT_TRUE(restored.ok()) << restored.status();
    EXPECT_EQ(restored->Current(), original.Current());  // bitwise
    EXPECT_EQ(restored->first_step(), original.first_step());
    EXPECT_EQ(restored->last_step(), original.last_step());
    EXPECT_EQ(restored->Serialize(), original.Serialize());
    for (const Report& r : after) {
      original.Add(r.first_step, r.last_step, r.counts);
      restored->Add(r.first_step, r.last_step, r.counts);
    }
    EXPECT_EQ(restored->Current(), original.Current());
  }
}

TEST(SmoothedLoadCheckpointTest, EmptyRoundTrip) {
  for (const SmoothingOptions& options : {Ema(5), Window(5)}) {
    const SmoothedLoad empty = Make(2, 2, options);
    auto restored = SmoothedLoad::Restore(empty.Serialize(), 2, 2, options);
    ASSERT_TRUE(restored.ok()) << restored.status();
    EXPECT_TRUE(restored->empty());
    EXPECT_EQ(restored->first_step(), 0);
    EXPECT_EQ(restored->last_step(), 0);
    EXPECT_THAT(restored->Current().values, ElementsAre(0, 0, 0, 0));
  }
}

TEST(SmoothedLoadCheckpointTest, RejectsCorruptData) {
  SmoothedLoad load = Make(1, 2, Ema(10));
  load.Add(3, 4, std::vector<double>{1, 2});
  const std::string bytes = load.Serialize();
  ASSERT_EQ(bytes.size(), kStateOffset + 16);
  EXPECT_TRUE(RestoreStatus(bytes, 1, 2, Ema(10)).ok());

  std::string bad = bytes;
  bad[0] = 'X';
  EXPECT_EQ(
      RestoreStatus(bad, 1, 2, Ema(10)),
      absl::DataLossError("smoothed load checkpoint: wrong magic: not a smoothed load checkpoint"));
  EXPECT_EQ(RestoreStatus("", 1, 2, Ema(10)).code(), absl::StatusCode::kDataLoss);

  bad = bytes;
  bad[kVersionOffset] = 2;
  EXPECT_EQ(RestoreStatus(bad, 1, 2, Ema(10)),
            absl::DataLossError(
                "smoothed load checkpoint: format version 2 is not supported (expected 1)"));

  EXPECT_EQ(RestoreStatus(bytes.substr(0, bytes.size() - 1), 1, 2, Ema(10)),
            absl::DataLossError(
                "smoothed load checkpoint: truncated: the values would end at byte 73 of 72"));
  EXPECT_EQ(RestoreStatus(bytes.substr(0, 20), 1, 2, Ema(10)),
            absl::DataLossError("smoothed load checkpoint: truncated: ema_half_life_steps would "
                                "end at byte 24 of 20"));
  EXPECT_EQ(
      RestoreStatus(bytes + "x", 1, 2, Ema(10)),
      absl::DataLossError("smoothed load checkpoint: trailing data: 73 bytes expected, 74 found"));

  bad = bytes;
  PutUint64(bad, kStateOffset + 8, std::bit_cast<uint64_t>(std::nan("")));
  EXPECT_EQ(
      RestoreStatus(bad, 1, 2, Ema(10)),
      absl::DataLossError("smoothed load checkpoint: value [0][1] = nan is not finite and >= 0"));
  PutUint64(bad, kStateOffset + 8, std::bit_cast<uint64_t>(-1.0));
  EXPECT_EQ(
      RestoreStatus(bad, 1, 2, Ema(10)),
      absl::DataLossError("smoothed load checkpoint: value [0][1] = -1 is not finite and >= 0"));

  bad = bytes;
  PutUint64(bad, kFirstStepOffset, 5);  // first_step 5 > last_step 4
  EXPECT_EQ(
      RestoreStatus(bad, 1, 2, Ema(10)),
      absl::DataLossError("smoothed load checkpoint: steps [5, 4] are not 0 <= first <= last"));
}

TEST(SmoothedLoadCheckpointTest, RejectsCorruptBuckets) {
  // W = 4: one bucket per step. Bucket 3 holds the report; the state is the bucket count (4
  // bytes), then per bucket its index (8 bytes) and values.
  SmoothedLoad load = Make(1, 2, Window(4));
  load.Add(3, 3, std::vector<double>{1, 2});
  const std::string bytes = load.Serialize();
  ASSERT_EQ(bytes.size(), kStateOffset + 4 + 8 + 16);

  std::string bad = bytes;
  PutUint64(bad, kStateOffset + 4 + 8 + 8, std::bit_cast<uint64_t>(std::nan("")));
  EXPECT_EQ(RestoreStatus(bad, 1, 2, Window(4)),
            absl::DataLossError(
                "smoothed load checkpoint: value [0][1] of bucket 3 = nan is not finite and >= 0"));

  bad = bytes;
  PutUint64(bad, kStateOffset + 4, 4);  // newer than last_step 3
  EXPECT_EQ(RestoreStatus(bad, 1, 2, Window(4)),
            absl::DataLossError(
                "smoothed load checkpoint: bucket 0 has index 4, expected one in [0, 3]"));

  bad = bytes;
  bad[kStateOffset] = 9;
  EXPECT_EQ(RestoreStatus(bad, 1, 2, Window(4)),
            absl::DataLossError("smoothed load checkpoint: bucket count 9 is more than the 5 of "
                                "window_steps = 4"));
}

TEST(SmoothedLoadCheckpointTest, RejectsOtherDimensionsAndOptions) {
  SmoothedLoad load = Make(1, 2, Ema(10));
  load.Add(0, 0, std::vector<double>{1, 2});
  const std::string bytes = load.Serialize();
  EXPECT_EQ(RestoreStatus(bytes, 2, 2, Ema(10)),
            absl::InvalidArgumentError("checkpoint has num_layers = 1, expected 2"));
  EXPECT_EQ(RestoreStatus(bytes, 1, 3, Ema(10)),
            absl::InvalidArgumentError("checkpoint has num_experts = 2, expected 3"));
  EXPECT_EQ(RestoreStatus(bytes, 1, 2, Ema(20)),
            absl::InvalidArgumentError("checkpoint has ema_half_life_steps = 10, expected 20"));
  EXPECT_EQ(RestoreStatus(bytes, 1, 2, Window(10)),
            absl::InvalidArgumentError("checkpoint has kind = ema, expected window"));
  EXPECT_EQ(RestoreStatus(bytes, 1, 2, Ema(0)),
            absl::InvalidArgumentError("ema_half_life_steps = 0 is out of range [1, 1000000]"));
  EXPECT_EQ(RestoreStatus(bytes, 0, 2, Ema(10)),
            absl::InvalidArgumentError("num_layers = 0 is out of range [1, 4096]"));

  SmoothedLoad window = Make(1, 2, Window(10));
  EXPECT_EQ(RestoreStatus(window.Serialize(), 1, 2, Window(11)),
            absl::InvalidArgumentError("checkpoint has window_steps = 10, expected 11"));
}

TEST(SmoothedLoadDeathTest, AddChecksItsContract) {
  SmoothedLoad load = Make(1, 2, Window(4));
  EXPECT_DEATH(load.Add(2, 1, std::vector<double>{1, 2}), "first_step <= last_step");
  EXPECT_DEATH(load.Add(-1, 1, std::vector<double>{1, 2}), "0 <= first_step");
  EXPECT_DEATH(load.Add(0, 0, std::vector<double>{1}), "counts.size\\(\\) = 1, expected 1 × 2");
  EXPECT_DEATH(load.Add(0, 0, std::vector<double>{1, std::nan("")}),
               "counts\\[1\\] = nan is not finite and >= 0");
  SmoothedLoad ema = Make(1, 2, Ema(4));
  EXPECT_DEATH(ema.Add(0, 0, std::vector<double>{-1, 0}),
               "counts\\[0\\] = -1 is not finite and >= 0");
}

}  // namespace
}  // namespace eplb
