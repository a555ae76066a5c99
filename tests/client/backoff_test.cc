#include "client/backoff.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

namespace eplb::client {
namespace {

TEST(BackoffTest, ValidateNamesTheOwnerAndBothBounds) {
  EXPECT_TRUE(Backoff::Validate({absl::Milliseconds(5), absl::Milliseconds(5)}, "X").ok());
  EXPECT_EQ(
      Backoff::Validate({absl::ZeroDuration(), absl::Seconds(1)}, "PlanWatcherOptions").message(),
      "PlanWatcherOptions: backoff must satisfy 0 < initial_backoff (0) ≤ max_backoff (1s)");
  EXPECT_EQ(
      Backoff::Validate({absl::Seconds(2), absl::Seconds(1)}, "LoadReporterOptions").message(),
      "LoadReporterOptions: backoff must satisfy 0 < initial_backoff (2s) ≤ max_backoff "
      "(1s)");
  EXPECT_FALSE(Backoff::Validate({-absl::Seconds(1), absl::Seconds(1)}, "X").ok());
}

TEST(BackoffTest, WaitsStayUnderACeilingThatDoublesUpToTheMaximumAndResets) {
  Backoff backoff({absl::Milliseconds(100), absl::Milliseconds(1000)}, /*seed=*/1);
  const std::vector<absl::Duration> ceilings = {absl::Milliseconds(100),  absl::Milliseconds(200),
                                                absl::Milliseconds(400),  absl::Milliseconds(800),
                                                absl::Milliseconds(1000), absl::Milliseconds(1000)};
  for (const absl::Duration ceiling : ceilings) {
    EXPECT_EQ(backoff.ceiling(), ceiling);
    const absl::Duration wait = backoff.Next();
    EXPECT_GE(wait, absl::ZeroDuration());
    EXPECT_LE(wait, ceiling);
  }
  backoff.Reset();
  EXPECT_EQ(backoff.ceiling(), absl::Milliseconds(100));
  EXPECT_LE(backoff.Next(), absl::Milliseconds(100));
}

// Full jitter: clients that fail together (one seed each, as every process draws its own) wait
// anywhere in [0, ceiling], not all about the same time.
TEST(BackoffTest, ClientsThatFailTogetherSpreadOverTheWholeInterval) {
  std::vector<double> waits;
  for (uint64_t seed = 0; seed < 1000; ++seed) {
    Backoff backoff({absl::Seconds(1), absl::Seconds(1)}, seed);
    waits.push_back(absl::ToDoubleSeconds(backoff.Next()));
  }
  std::sort(waits.begin(), waits.end());
  EXPECT_LT(waits.front(), 0.01);
  EXPECT_GT(waits.back(), 0.99);
  // Each tenth of the interval holds about a tenth of the clients.
  for (int decile = 0; decile < 10; ++decile) {
    const auto count = std::count_if(waits.begin(), waits.end(), [&](double w) {
      return w >= decile / 10.0 && w < (decile + 1) / 10.0;
    });
    EXPECT_GT(count, 60) << "decile " << decile;
    EXPECT_LT(count, 140) << "decile " << decile;
  }
}

TEST(BackoffTest, TheSameSeedGivesTheSameWaitsAndUnseededBackoffsDiffer) {
  Backoff a({absl::Seconds(1), absl::Seconds(8)}, 42);
  Backoff b({absl::Seconds(1), absl::Seconds(8)}, 42);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(a.Next(), b.Next());
  // Two processes' backoffs (seeded from std::random_device) do not wait in lockstep.
  Backoff c({absl::Seconds(1), absl::Seconds(8)});
  Backoff d({absl::Seconds(1), absl::Seconds(8)});
  bool differ = false;
  for (int i = 0; i < 5; ++i) differ |= c.Next() != d.Next();
  EXPECT_TRUE(differ);
}

TEST(BackoffTest, HugeCeilingsDoNotOverflow) {
  Backoff backoff({absl::Hours(1000), absl::Hours(100000)}, 3);
  for (int i = 0; i < 20; ++i) {
    const absl::Duration wait = backoff.Next();
    EXPECT_GE(wait, absl::ZeroDuration());
    EXPECT_LE(wait, absl::Hours(100000));
  }
  EXPECT_EQ(backoff.ceiling(), absl::Hours(100000));
}

}  // namespace
}  // namespace eplb::client
