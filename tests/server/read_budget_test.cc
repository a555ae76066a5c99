// ReadBudget (grants within the capacity, in order, withdrawals) and CheckLoadReportWire (what a
// report may hold before it is parsed).
#include "server/read_budget.h"

#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/clock.h"
#include "eplb/v1/planner.pb.h"
#include "server/report_wire.h"

namespace eplb::server {
namespace {

// A budget with a hold limit of 10 s on a fake clock; reservations record the order they are
// granted in and whether they were found overdue.
class Budget {
 public:
  explicit Budget(int64_t capacity) : budget_(capacity, &clock_, absl::Seconds(10)) {}

  // Reserves and returns the ticket; `now` says whether it was granted at once.
  ReadBudget::Ticket Reserve(int64_t bytes, int id, bool* now) {
    return budget_.Reserve(
        bytes, [this, id] { granted_.push_back(id); }, [this, id] { overdue_.push_back(id); },
        now);
  }

  FakeClock clock_;
  ReadBudget budget_;
  std::vector<int> granted_;  // by a later Release or Withdraw
  std::vector<int> overdue_;
};

TEST(ReadBudgetTest, GrantsWithinTheCapacityInTheOrderOfReserving) {
  Budget b(10);
  bool now = false;
  const ReadBudget::Ticket t1 = b.Reserve(4, 1, &now);
  EXPECT_TRUE(now);  // free: granted at once, the callback dropped
  const ReadBudget::Ticket t2 = b.Reserve(4, 2, &now);
  EXPECT_TRUE(now);
  const ReadBudget::Ticket t3 = b.Reserve(4, 3, &now);
  EXPECT_FALSE(now);  // 12 > 10
  const ReadBudget::Ticket t4 = b.Reserve(1, 4, &now);
  EXPECT_FALSE(now);  // would fit, but waits behind 3: no overtaking
  EXPECT_EQ(b.budget_.state().bytes_in_use, 8);
  EXPECT_EQ(b.budget_.state().holding, 2);
  EXPECT_EQ(b.budget_.state().waiting, 2);
  EXPECT_THAT(b.granted_, ::testing::IsEmpty());

  b.budget_.Release(t1);  // 4 in use: 3 (4 bytes) and 4 (1 byte) fit
  EXPECT_THAT(b.granted_, ::testing::ElementsAre(3, 4));
  EXPECT_EQ(b.budget_.state().bytes_in_use, 9);
  EXPECT_EQ(b.budget_.state().waiting, 0);
  for (const ReadBudget::Ticket t : {t2, t3, t4}) b.budget_.Release(t);
  EXPECT_EQ(b.budget_.state().bytes_in_use, 0);
  EXPECT_EQ(b.budget_.state().holding, 0);
}

TEST(ReadBudgetTest, AWithdrawnReservationIsNeverGrantedAndUnblocksThoseBehindIt) {
  Budget b(10);
  bool now = false;
  const ReadBudget::Ticket first = b.Reserve(8, 1, &now);
  ASSERT_TRUE(now);
  const ReadBudget::Ticket big = b.Reserve(10, 2, &now);
  ASSERT_FALSE(now);
  const ReadBudget::Ticket small = b.Reserve(2, 3, &now);
  ASSERT_FALSE(now);
  EXPECT_TRUE(b.budget_.Withdraw(big));  // waiting: withdrawn; the small one behind it now fits
  EXPECT_THAT(b.granted_, ::testing::ElementsAre(3));
  EXPECT_FALSE(b.budget_.Withdraw(small));  // granted already: the bytes are the caller's
  EXPECT_FALSE(b.budget_.Withdraw(big));    // gone
  EXPECT_EQ(b.budget_.state().bytes_in_use, 10);
  b.budget_.Release(first);
  b.budget_.Release(small);
  EXPECT_THAT(b.granted_, ::testing::ElementsAre(3));  // the withdrawn one never ran
  EXPECT_EQ(b.budget_.state().bytes_in_use, 0);
}

// Held beyond the limit: `overdue` runs once per reservation, counting from its grant; waiting
// reservations are never overdue.
TEST(ReadBudgetTest, AReservationHeldBeyondTheLimitIsOverdueOnce) {
  Budget b(10);
  bool now = false;
  const ReadBudget::Ticket early = b.Reserve(6, 1, &now);
  ASSERT_TRUE(now);
  b.clock_.Advance(absl::Seconds(6));
  const ReadBudget::Ticket late = b.Reserve(4, 2, &now);
  ASSERT_TRUE(now);
  const ReadBudget::Ticket waiting = b.Reserve(6, 3, &now);
  ASSERT_FALSE(now);
  b.clock_.Advance(absl::Seconds(4));  // early held 10 s: not beyond yet
  EXPECT_EQ(b.budget_.CancelOverdue(), 0);
  b.clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(b.budget_.CancelOverdue(), 1);
  EXPECT_THAT(b.overdue_, ::testing::ElementsAre(1));
  EXPECT_EQ(b.budget_.CancelOverdue(), 0);  // once
  b.budget_.Release(early);                 // the holder gives it back: 3 is granted now
  EXPECT_THAT(b.granted_, ::testing::ElementsAre(3));
  b.budget_.Arrived(waiting);          // 3's message arrived: counting it may take any time
  b.clock_.Advance(absl::Seconds(6));  // late held 11 s, 3 held 6 s since its grant
  EXPECT_EQ(b.budget_.CancelOverdue(), 1);
  EXPECT_THAT(b.overdue_, ::testing::ElementsAre(1, 2));
  b.clock_.Advance(absl::Seconds(60));
  EXPECT_EQ(b.budget_.CancelOverdue(), 0);
  b.budget_.Release(late);
  b.budget_.Release(waiting);
  EXPECT_EQ(b.budget_.state().holding, 0);
}

TEST(ReadBudgetTest, ACapacityOfZeroGrantsEverything) {
  Budget b(0);
  bool now = false;
  for (int i = 0; i < 100; ++i) {
    b.Reserve(int64_t{1} << 40, i, &now);
    ASSERT_TRUE(now);
  }
  EXPECT_EQ(b.budget_.state().waiting, 0);
  EXPECT_EQ(b.budget_.state().holding, 100);
  b.clock_.Advance(absl::Hours(1));  // nothing to keep from others: nothing is overdue
  EXPECT_EQ(b.budget_.CancelOverdue(), 0);
  EXPECT_THAT(b.overdue_, ::testing::IsEmpty());
}

absl::Status Check(const std::string& bytes) {
  google::protobuf::io::ArrayInputStream input(bytes.data(), static_cast<int>(bytes.size()));
  return CheckLoadReportWire(&input);
}

v1::LoadReport Valid() {
  v1::LoadReport report;
  report.set_deployment("d");
  report.set_rank(3);
  report.set_sequence(9);
  report.set_first_step(1);
  report.set_last_step(2);
  report.set_plan_version(4);
  report.set_counts_kind(v1::LoadReport::LOCAL_SLOT);
  report.set_session(77);
  report.set_first_layer(5);
  for (int l = 0; l < 3; ++l) report.add_layers()->mutable_counts()->Resize(16, 1.5);
  return report;
}

TEST(ReportWireTest, EveryFieldOfAReportPasses) {
  EXPECT_TRUE(Check(Valid().SerializeAsString()).ok());
  EXPECT_TRUE(Check("").ok());  // the empty report parses (and is then refused field by field)
  // Counts one double at a time (unpacked, as an old or foreign encoder may write them).
  std::string unpacked = "\x42\x12";  // layers, 18 bytes
  for (int i = 0; i < 2; ++i) unpacked.append("\x09").append(8, '\0');
  EXPECT_TRUE(Check(unpacked).ok());
  v1::LoadReport parsed;
  ASSERT_TRUE(parsed.ParseFromString(unpacked));
  EXPECT_EQ(parsed.layers(0).counts_size(), 2);
}

TEST(ReportWireTest, WhatWouldParseIntoFarMoreMemoryThanItsBytesIsRefused) {
  // 4097 empty layers entries: 2 bytes each on the wire, an object each parsed.
  std::string layers;
  for (int l = 0; l < 4097; ++l) layers += std::string("\x42\x00", 2);
  EXPECT_EQ(Check(layers).message(), "it has more than 4096 layers entries");
  EXPECT_TRUE(Check(layers.substr(2)).ok());  // 4096 pass

  // 65 unknown fields, at the top or inside a layer.
  std::string unknown;
  for (int i = 0; i < 65; ++i) unknown += std::string("\xf8\x01\x01", 3);  // field 31, varint 1
  EXPECT_EQ(Check(unknown).message(), "it has more than 64 fields of unknown numbers");
  EXPECT_TRUE(Check(unknown.substr(3)).ok());
  ASSERT_EQ(unknown.size(), 195u);
  std::string in_layer = "\x42\xc3\x01";  // layers, 195 bytes (a two-byte varint)
  in_layer.append(unknown);
  EXPECT_EQ(Check(in_layer).message(), "it has more than 64 fields of unknown numbers");
  // A known number with another wire type is kept as unknown by the parser: it counts.
  std::string mistyped;
  for (int i = 0; i < 65; ++i) mistyped.append("\x11").append(8, '\0');  // rank, fixed64
  EXPECT_EQ(Check(mistyped).message(), "it has more than 64 fields of unknown numbers");

  // Groups (deprecated; nested without bound).
  EXPECT_EQ(Check("\xfb\x01\xfc\x01").message(), "field 31 is a group");
}

TEST(ReportWireTest, TruncatedOrBrokenBytesAreRefused) {
  const std::string valid = Valid().SerializeAsString();
  for (size_t cut : {size_t{1}, size_t{5}, valid.size() / 2, valid.size() - 1}) {
    const std::string truncated = valid.substr(0, cut);
    v1::LoadReport parsed;
    if (parsed.ParseFromString(truncated)) continue;  // a cut between fields is a valid message
    EXPECT_EQ(Check(truncated).message(), "it is not a well-formed protobuf message") << cut;
  }
  EXPECT_EQ(Check("\xff\xff\xff\xff").message(), "it is not a well-formed protobuf message");
  // A layer claiming more bytes than follow.
  EXPECT_EQ(Check("\x42\x7f\x0a\x00").message(), "it is not a well-formed protobuf message");
}

}  // namespace
}  // namespace eplb::server
