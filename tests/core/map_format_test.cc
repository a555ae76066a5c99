#include "core/map_format.h"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/expert_map.h"
#include "core/json.h"
#include "core/load.h"
#include "core/shape.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace eplb {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

struct Shape {
  int32_t layers, experts, slots, ranks;
};

// A random valid map: every expert once, the remaining slots random replicas, all shuffled.
ExpertMap RandomMap(const Shape& s, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> phy2log;
  for (int32_t l = 0; l < s.layers; ++l) {
    std::vector<int32_t> row(s.slots);
    std::iota(row.begin(), row.begin() + s.experts, 0);
    for (int32_t p = s.experts; p < s.slots; ++p) row[p] = static_cast<int32_t>(rng() % s.experts);
    std::shuffle(row.begin(), row.end(), rng);
    phy2log.insert(phy2log.end(), row.begin(), row.end());
  }
  absl::StatusOr<ExpertMap> map =
      ExpertMap::FromPhy2Log(s.layers, s.experts, SlotLayout(s.slots, s.ranks), std::move(phy2log));
  EXPECT_TRUE(map.ok()) << map.status();
  return *std::move(map);
}

// L=2, E=4, P=6, R=4: ranks hold 2, 2, 1, 1 slots.
ExpertMap SmallMap() {
  absl::StatusOr<ExpertMap> map =
      ExpertMap::FromPhy2Log(2, 4, SlotLayout(6, 4), {0, 1, 2, 3, 0, 1, /**/ 3, 3, 2, 1, 0, 2});
  EXPECT_TRUE(map.ok()) << map.status();
  return *std::move(map);
}

// The error of parsing `json` as a map, which must fail with INVALID_ARGUMENT.
std::string MapError(const std::string& json, const MapShapeHints& hints = {}) {
  absl::StatusOr<ParsedExpertMap> parsed = ParseExpertMapJson(json, hints);
  if (parsed.ok()) {
    ADD_FAILURE() << "parsed: " << json;
    return "";
  }
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << parsed.status();
  return std::string(parsed.status().message());
}

std::string LoadError(const std::string& json) {
  absl::StatusOr<LoadMatrix> load = ParseLoadJson(json);
  if (load.ok()) {
    ADD_FAILURE() << "parsed: " << json;
    return "";
  }
  EXPECT_EQ(load.status().code(), absl::StatusCode::kInvalidArgument) << load.status();
  return std::string(load.status().message());
}

// Parses `json`, lets `edit` change the document, and writes it back.
std::string Edit(const std::string& json, const std::function<void(JsonValue&)>& edit) {
  absl::StatusOr<JsonValue> doc = ParseJson(json);
  EXPECT_TRUE(doc.ok()) << doc.status();
  edit(*doc);
  return WriteJson(*doc);
}

JsonValue& Member(JsonValue& object, const std::string& key) {
  for (auto& [name, value] : object.mutable_object_members()) {
    if (name == key) return value;
  }
  ADD_FAILURE() << "no member " << key;
  static JsonValue none;
  return none;
}

void Erase(JsonValue& object, const std::string& key) {
  auto& members = object.mutable_object_members();
  members.erase(std::remove_if(members.begin(), members.end(),
                               [&](const JsonValue::Member& m) { return m.first == key; }),
                members.end());
}

JsonValue& At(JsonValue& array, size_t i) { return array.mutable_array_items().at(i); }

// ---- Round trips -------------------------------------------------------------------------------

const Shape kShapes[] = {
    {1, 1, 1, 1},        // smallest
    {3, 8, 8, 4},        // no redundancy
    {4, 16, 20, 4},      // redundant slots
    {5, 30, 30, 8},      // P not a multiple of R: 4,4,4,4,4,4,3,3
    {6, 16, 21, 4},      // redundant and uneven: 6,5,5,5
    {2, 4, 64, 7},       // P = 16 E
    {3, 5, 9, 9},        // one slot per rank
    {58, 256, 288, 32},  // DeepSeek-V3-like
};

class MapFormatRoundTripTest : public ::testing::TestWithParam<Shape> {};

TEST_P(MapFormatRoundTripTest, AllFormatsRoundTripExactly) {
  const Shape s = GetParam();
  for (uint32_t seed = 1; seed <= 3; ++seed) {
    const ExpertMap map = RandomMap(s, seed);
    for (MapFormat format : {MapFormat::kEplb, MapFormat::kVllmAscend, MapFormat::kSglang}) {
      SCOPED_TRACE(std::string(MapFormatName(format)));
      const std::string json = ExpertMapToText(map, format, 7);
      MapShapeHints hints;
      if (format == MapFormat::kSglang) hints.num_ranks = s.ranks;
      absl::StatusOr<ParsedExpertMap> parsed = ParseExpertMapJson(json, hints);
      ASSERT_TRUE(parsed.ok()) << parsed.status();
      EXPECT_EQ(parsed->map, map);
      EXPECT_EQ(parsed->format, format);
      EXPECT_EQ(parsed->version, format == MapFormat::kEplb ? 7 : 0);
      // Hints that agree with the file change nothing.
      hints.num_logical_experts = s.experts;
      hints.num_ranks = s.ranks;
      parsed = ParseExpertMapJson(json, hints);
      ASSERT_TRUE(parsed.ok()) << parsed.status();
      EXPECT_EQ(parsed->map, map);
      // The output is valid JSON of one line per layer row (plus a few lines of keys).
      EXPECT_TRUE(ParseJson(json).ok());
      EXPECT_EQ(json.back(), '\n');
    }
  }
}

INSTANTIATE_TEST_SUITE_P(MapFormat, MapFormatRoundTripTest, ::testing::ValuesIn(kShapes));

TEST(MapFormatTest, KeepsReplicaOrderInEplbFormat) {
  // Replica order other than slot order is carried by log2phy.
  absl::StatusOr<ExpertMap> map =
      ExpertMap::FromReplicaRanks(1, 2, SlotLayout(4, 2), {0, 1, 0, 0}, {2, 0, 0, 1});
  ASSERT_TRUE(map.ok()) << map.status();
  const std::string json = ExpertMapToText(*map, MapFormat::kEplb, 3);
  EXPECT_THAT(json, HasSubstr("\"log2phy\": [\n    [[2,3,0],[1,-1,-1]]\n  ]"));
  absl::StatusOr<ParsedExpertMap> parsed = ParseExpertMapJson(json);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->map, *map);
}

TEST(MapFormatTest, WritesEplbFormat) {
  EXPECT_EQ(ExpertMapToText(SmallMap(), MapFormat::kEplb, 12),
            R"({
  "format": "eplb.expert_map.v1",
  "version": 12,
  "num_layers": 2,
  "num_logical_experts": 4,
  "num_physical_experts": 6,
  "num_ranks": 4,
  "slots_per_rank": [2, 2, 1, 1],
  "phy2log": [
    [0, 1, 2, 3, 0, 1],
    [3, 3, 2, 1, 0, 2]
  ],
  "log2phy": [
    [[0,4,-1],[1,5,-1],[2,-1,-1],[3,-1,-1]],
    [[4,-1,-1],[3,-1,-1],[2,5,-1],[0,1,-1]]
  ],
  "logcnt": [
    [2, 2, 1, 1],
    [1, 1, 2, 2]
  ]
}
)");
}

// SmallMap's layers: expert 0 on slots 0 and 4, expert 1 on 1 and 5 (layer 0); expert 2 on 2
// and 5, expert 3 on 0 and 1 (layer 1); the others once.
const std::vector<double> kSmallShares = {0.25,       0.5,   1,       1, 0.75, 0.5,
                                          /**/ 0.125, 0.875, 1.0 / 3, 1, 1,    2.0 / 3};

TEST(MapFormatTest, WritesReplicaSharesAfterTheTablesAndReadsThemBackExactly) {
  const std::string json = ExpertMapToText(SmallMap(), MapFormat::kEplb, 12, nullptr, kSmallShares);
  EXPECT_THAT(json, HasSubstr(R"(  "logcnt": [
    [2, 2, 1, 1],
    [1, 1, 2, 2]
  ],
  "replica_share": [
    [0.25, 0.5, 1, 1, 0.75, 0.5],
    [0.125, 0.875, 0.3333333333333333, 1, 1, 0.6666666666666666]
  ]
}
)"));
  absl::StatusOr<ParsedExpertMap> parsed = ParseExpertMapJson(json);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->map, SmallMap());
  EXPECT_EQ(parsed->replica_share, kSmallShares);  // bit for bit
  // Without shares the key is absent and the table empty.
  parsed = ParseExpertMapJson(ExpertMapToText(SmallMap(), MapFormat::kEplb, 12));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(parsed->replica_share.empty());
  // Only the eplb format carries them.
  for (MapFormat format : {MapFormat::kVllmAscend, MapFormat::kSglang, MapFormat::kTrtllm}) {
    const absl::Status st = CheckMapWritable(SmallMap(), format, nullptr, kSmallShares);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(st.message(), absl::StrCat("replica shares are carried by the eplb format only, not ",
                                         MapFormatName(format)));
  }
}

TEST(MapFormatTest, ReplicaSharesAreChecked) {
  const ExpertMap map = SmallMap();
  const auto error = [&](std::vector<double> share) {
    const absl::Status st = CheckReplicaShares(map, share);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    // CheckMapWritable refuses the same, in the same words.
    EXPECT_EQ(CheckMapWritable(map, MapFormat::kEplb, nullptr, share), st);
    return std::string(st.message());
  };
  EXPECT_TRUE(CheckReplicaShares(map, kSmallShares).ok());
  EXPECT_EQ(error({1, 1}),
            "replica_share has 2 entries, expected num_layers × num_physical_experts = 2 × 6 = 12");
  std::vector<double> share = kSmallShares;
  share[10] = 1.5;
  EXPECT_EQ(error(share), "replica_share[1][4] = 1.5 is out of range [0, 1]");
  share[10] = -0.25;
  EXPECT_EQ(error(share), "replica_share[1][4] = -0.25 is out of range [0, 1]");
  share[10] = std::numeric_limits<double>::quiet_NaN();
  EXPECT_EQ(error(share), "replica_share[1][4] = nan is out of range [0, 1]");
  share = kSmallShares;
  share[4] = 0.65;  // expert 0 of layer 0: 0.25 + 0.65
  EXPECT_EQ(error(share),
            "replica_share[0]: the shares of expert 0 (slots 0, 4) sum to 0.9, expected 1");
  share = kSmallShares;
  share[9] = 0.5;  // expert 1 of layer 1, one slot
  EXPECT_EQ(error(share),
            "replica_share[1]: the shares of expert 1 (slot 3) sum to 0.5, expected 1");
  // Within the tolerance: accepted.
  share = kSmallShares;
  share[4] += 0.5e-6;
  EXPECT_TRUE(CheckReplicaShares(map, share).ok());
}

TEST(MapFormatTest, ReplicaSharesInAFileAreChecked) {
  const std::string json = ExpertMapToText(SmallMap(), MapFormat::kEplb, 1, nullptr, kSmallShares);
  const auto error = [&](const std::function<void(JsonValue&)>& edit) {
    return MapError(Edit(json, edit));
  };
  EXPECT_EQ(error([](JsonValue& d) { Member(d, "replica_share") = JsonValue::Int(1); }),
            "replica_share is not an array");
  EXPECT_EQ(
      error([](JsonValue& d) { Member(d, "replica_share").mutable_array_items().pop_back(); }),
      "replica_share has 1 rows, expected num_layers = 2");
  EXPECT_EQ(error([](JsonValue& d) { At(Member(d, "replica_share"), 1) = JsonValue::Null(); }),
            "replica_share[1] is not an array");
  EXPECT_EQ(error([](JsonValue& d) {
              At(Member(d, "replica_share"), 1).mutable_array_items().pop_back();
            }),
            "replica_share[1] has 5 entries, expected num_physical_experts = 6");
  EXPECT_EQ(error([](JsonValue& d) {
              At(At(Member(d, "replica_share"), 0), 2) = JsonValue::String("1");
            }),
            "replica_share[0][2] is not a number");
  EXPECT_EQ(
      error([](JsonValue& d) { At(At(Member(d, "replica_share"), 0), 2) = JsonValue::Int(2); }),
      "replica_share[0][2] = 2 is out of range [0, 1]");
  EXPECT_EQ(error([](JsonValue& d) {
              At(At(Member(d, "replica_share"), 1), 5) = JsonValue::Double(0.5);
            }),
            "replica_share[1]: the shares of expert 2 (slots 2, 5) sum to 0.833333333, "
            "expected 1");
  // Integers are numbers: a row of whole shares reads as well.
  absl::StatusOr<ParsedExpertMap> parsed = ParseExpertMapJson(Edit(json, [](JsonValue& d) {
    At(Member(d, "replica_share"), 0) = JsonValue::MakeIntArray({1, 1, 1, 1, 0, 0});
  }));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->replica_share[0], 1.0);
  EXPECT_EQ(parsed->replica_share[4], 0.0);
}

TEST(MapFormatTest, WritesVllmAscendFormat) {
  EXPECT_EQ(ExpertMapToText(SmallMap(), MapFormat::kVllmAscend),
            R"({
  "moe_layer_count": 2,
  "layer_list": [
    {"layer_id": 0, "device_count": 4, "device_list": [
      {"device_id": 0, "device_expert": [0, 1]},
      {"device_id": 1, "device_expert": [2, 3]},
      {"device_id": 2, "device_expert": [0]},
      {"device_id": 3, "device_expert": [1]}
    ]},
    {"layer_id": 1, "device_count": 4, "device_list": [
      {"device_id": 0, "device_expert": [3, 3]},
      {"device_id": 1, "device_expert": [2, 1]},
      {"device_id": 2, "device_expert": [0]},
      {"device_id": 3, "device_expert": [2]}
    ]}
  ]
}
)");
}

TEST(MapFormatTest, WritesSglangFormat) {
  EXPECT_EQ(ExpertMapToText(SmallMap(), MapFormat::kSglang),
            R"({
  "physical_to_logical_map": [
    [0, 1, 2, 3, 0, 1],
    [3, 3, 2, 1, 0, 2]
  ]
}
)");
}

TEST(MapFormatTest, FormatNames) {
  for (MapFormat format :
       {MapFormat::kEplb, MapFormat::kVllmAscend, MapFormat::kSglang, MapFormat::kTrtllm}) {
    absl::StatusOr<MapFormat> parsed = ParseMapFormat(MapFormatName(format));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, format);
  }
  EXPECT_EQ(MapFormatName(MapFormat::kVllmAscend), "vllm-ascend");
  EXPECT_EQ(MapFormatName(MapFormat::kTrtllm), "trtllm");
  absl::StatusOr<MapFormat> bad = ParseMapFormat("vllm");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message(),
            "unknown map format \"vllm\": expected eplb, vllm-ascend, sglang or trtllm");
}

// ---- Detection ---------------------------------------------------------------------------------

TEST(MapFormatTest, RefusesUnknownAndAmbiguousDocuments) {
  EXPECT_EQ(MapError(R"({"experts": []})"),
            "not an expert map in a known format: expected {\"format\": \"eplb.expert_map.v1\", "
            "…} (eplb), {\"moe_layer_count\": …, \"layer_list\": […]} (vllm-ascend) or "
            "{\"physical_to_logical_map\": […]} (sglang)");
  EXPECT_EQ(MapError(R"({"format": "eplb.expert_map.v1", "physical_to_logical_map": [[0]]})"),
            "ambiguous expert map: it has keys of the eplb and the sglang formats");
  EXPECT_EQ(MapError("[[0, 1]]"), "expected a JSON object at the top level, found an array");
  EXPECT_EQ(MapError("7"), "expected a JSON object at the top level, found a number");
  EXPECT_EQ(MapError("{\"format\": \"eplb.expert_map.v1\",\n \"version\": 1,]"),
            "line 2, column 15: expected an object key (a string)");
}

TEST(MapFormatTest, RefusesNegativeHints) {
  const std::string json = ExpertMapToText(SmallMap(), MapFormat::kEplb);
  EXPECT_EQ(MapError(json, {.num_logical_experts = -1}),
            "MapShapeHints.num_logical_experts = -1 is negative");
  EXPECT_EQ(MapError(json, {.num_ranks = -4}), "MapShapeHints.num_ranks = -4 is negative");
}

// ---- eplb.expert_map.v1 ------------------------------------------------------------------------

class MapFormatEplbTest : public ::testing::Test {
 protected:
  // L=3, E=16, P=21, R=4 (6, 5, 5, 5 slots): log2phy rows of 6.
  MapFormatEplbTest() : map_(RandomMap({3, 16, 21, 4}, 5)) {
    json_ = ExpertMapToText(map_, MapFormat::kEplb, 9);
  }
  std::string ErrorAfter(const std::function<void(JsonValue&)>& edit,
                         const MapShapeHints& hints = {}) {
    return MapError(Edit(json_, edit), hints);
  }

  ExpertMap map_;
  std::string json_;
};

TEST_F(MapFormatEplbTest, Format) {
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Erase(d, "format"); }), "missing key \"format\"");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Member(d, "format") = JsonValue::Int(1); }),
            "format is not a string");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) {
              Member(d, "format") = JsonValue::String("eplb.expert_map.v2");
            }),
            "format = \"eplb.expert_map.v2\" is not supported: expected \"eplb.expert_map.v1\"");
}

TEST_F(MapFormatEplbTest, Version) {
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Erase(d, "version"); }), "missing key \"version\"");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Member(d, "version") = JsonValue::Int(-1); }),
            "version = -1 is out of range [0, 9223372036854775807]");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Member(d, "version") = JsonValue::Double(1.5); }),
            "version = 1.5 is not an integer");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Member(d, "version") = JsonValue::String("7"); }),
            "version is not a number");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Member(d, "version") = JsonValue::Null(); }),
            "version is not a number");
  absl::StatusOr<ParsedExpertMap> parsed = ParseExpertMapJson(
      Edit(json_, [](JsonValue& d) { Member(d, "version") = JsonValue::Int(0); }));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->version, 0);
}

TEST_F(MapFormatEplbTest, ShapeFields) {
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Erase(d, "num_ranks"); }), "missing key \"num_ranks\"");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Member(d, "num_ranks") = JsonValue::Int(0); }),
            "num_ranks = 0 is out of range [1, 65536]");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Member(d, "num_layers") = JsonValue::Int(99999999999); }),
            "num_layers = 99999999999 is out of range [1, 4096]");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) {
              Member(d, "num_logical_experts") = JsonValue::Int(-5000000000);
            }),
            "num_logical_experts = -5000000000 is out of range [1, 65536]");
  EXPECT_EQ(
      ErrorAfter([](JsonValue& d) { Member(d, "num_logical_experts") = JsonValue::Double(2.5); }),
      "num_logical_experts = 2.5 is not an integer");
}

TEST_F(MapFormatEplbTest, ShapeFieldsFromText) {
  // Texts the writer cannot produce: non-finite and too-large literals.
  std::string json = json_;
  json.replace(json.find("\"num_layers\": 3"), 15, "\"num_layers\": 1e999");
  EXPECT_EQ(MapError(json), "line 4, column 17: number out of the range of a double");
  json = json_;
  json.replace(json.find("\"num_physical_experts\": 21"), 26, "\"num_physical_experts\": 22.0");
  EXPECT_EQ(MapError(json),
            "slots_per_rank[1] = 5, expected 6 (22 slots on 4 ranks: 6 on ranks 0-1, "
            "5 on the others)");
  json = json_;
  json.replace(json.find("\"num_physical_experts\": 21"), 26, "\"num_physical_experts\": 300");
  EXPECT_THAT(MapError(json), StartsWith("num_physical_experts = 300 is out of range [16, 256]"));
}

TEST_F(MapFormatEplbTest, HintsMustAgree) {
  EXPECT_EQ(MapError(json_, {.num_logical_experts = 32}),
            "the file has num_logical_experts = 16, but num_logical_experts = 32 was given");
  EXPECT_EQ(MapError(json_, {.num_ranks = 8}),
            "the file has num_ranks = 4, but num_ranks = 8 was given");
}

TEST_F(MapFormatEplbTest, SlotsPerRank) {
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Erase(d, "slots_per_rank"); }),
            "missing key \"slots_per_rank\"");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Member(d, "slots_per_rank") = JsonValue::Int(5); }),
            "slots_per_rank is not an array");
  EXPECT_EQ(ErrorAfter(
                [](JsonValue& d) { Member(d, "slots_per_rank").mutable_array_items().pop_back(); }),
            "slots_per_rank has 3 entries, expected num_ranks = 4");
  // 21 slots on 4 ranks are 6, 5, 5, 5 — never 5, 5, 5, 6.
  EXPECT_EQ(
      ErrorAfter([](JsonValue& d) {
        At(Member(d, "slots_per_rank"), 0) = JsonValue::Int(5);
        At(Member(d, "slots_per_rank"), 3) = JsonValue::Int(6);
      }),
      "slots_per_rank[0] = 5, expected 6 (21 slots on 4 ranks: 6 on rank 0, 5 on the others)");
  EXPECT_EQ(
      ErrorAfter([](JsonValue& d) { At(Member(d, "slots_per_rank"), 2) = JsonValue::String("5"); }),
      "slots_per_rank[2] is not a number");
}

TEST_F(MapFormatEplbTest, Phy2Log) {
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Erase(d, "phy2log"); }), "missing key \"phy2log\"");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Member(d, "phy2log") = JsonValue::MakeObject(); }),
            "phy2log is not an array");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Member(d, "phy2log").mutable_array_items().pop_back(); }),
            "phy2log has 2 rows, expected num_layers = 3");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { At(Member(d, "phy2log"), 1) = JsonValue::Int(0); }),
            "phy2log[1] is not an array");
  EXPECT_EQ(ErrorAfter(
                [](JsonValue& d) { At(Member(d, "phy2log"), 1).mutable_array_items().pop_back(); }),
            "phy2log[1] has 20 entries, expected num_physical_experts = 21");
  EXPECT_EQ(
      ErrorAfter([](JsonValue& d) { At(At(Member(d, "phy2log"), 0), 3) = JsonValue::Double(1.5); }),
      "phy2log[0][3] = 1.5 is not an integer");
  EXPECT_EQ(
      ErrorAfter([](JsonValue& d) { At(At(Member(d, "phy2log"), 2), 7) = JsonValue::Int(300); }),
      "phy2log[2][7] = 300 is out of range [0, 15]");
  EXPECT_EQ(
      ErrorAfter([](JsonValue& d) { At(At(Member(d, "phy2log"), 2), 7) = JsonValue::Int(-1); }),
      "phy2log[2][7] = -1 is out of range [0, 15]");
  EXPECT_EQ(
      ErrorAfter([](JsonValue& d) { At(At(Member(d, "phy2log"), 0), 0) = JsonValue::Bool(true); }),
      "phy2log[0][0] is not a number");
  // Rows of integers are read packed: the range check holds at the ends of int64 too.
  for (const int64_t extreme :
       {std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min(),
        int64_t{1} << 32, int64_t{15} - (int64_t{1} << 32)}) {
    EXPECT_EQ(ErrorAfter([&](JsonValue& d) {
                At(At(Member(d, "phy2log"), 2), 7) = JsonValue::Int(extreme);
              }),
              absl::StrCat("phy2log[2][7] = ", extreme, " is out of range [0, 15]"));
  }
  EXPECT_EQ(ErrorAfter([](JsonValue& d) {
              At(At(Member(d, "phy2log"), 1), 20) = JsonValue::Double(1e20);
            }),
            "phy2log[1][20] = 1e+20 is out of range [0, 15]");
}

TEST_F(MapFormatEplbTest, IntegralNumbersWrittenAsDoublesAreAccepted) {
  std::string text = json_;
  const std::string first = "\"phy2log\": [\n    [" + std::to_string(map_.phy2log(0)[0]);
  const size_t at = text.find(first);
  ASSERT_NE(at, std::string::npos);
  text.insert(at + first.size(), ".0");
  absl::StatusOr<ParsedExpertMap> parsed = ParseExpertMapJson(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->map, map_);
}

TEST_F(MapFormatEplbTest, Log2Phy) {
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Erase(d, "log2phy"); }), "missing key \"log2phy\"");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Member(d, "log2phy").mutable_array_items().pop_back(); }),
            "log2phy has 2 rows, expected num_layers = 3");
  EXPECT_EQ(ErrorAfter(
                [](JsonValue& d) { At(Member(d, "log2phy"), 1).mutable_array_items().pop_back(); }),
            "log2phy[1] has 15 rows, expected num_logical_experts = 16");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) {
              At(At(Member(d, "log2phy"), 1), 4).mutable_array_items().pop_back();
            }),
            "log2phy[1][4] has 5 entries, expected num_physical_experts − num_logical_experts + 1 "
            "= 6");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) {
              At(At(At(Member(d, "log2phy"), 0), 2), 5) = JsonValue::Int(21);
            }),
            "log2phy[0][2][5] = 21 is out of range [-1, 20]");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) {
              At(At(At(Member(d, "log2phy"), 0), 2), 5) = JsonValue::Double(0.5);
            }),
            "log2phy[0][2][5] = 0.5 is not an integer");
  // A slot that does not hold the expert.
  int32_t other = 0;
  while (map_.phy2log(1)[other] == 3) ++other;
  EXPECT_EQ(ErrorAfter([&](JsonValue& d) {
              At(At(At(Member(d, "log2phy"), 1), 3), 0) = JsonValue::Int(other);
            }),
            "log2phy[1][3][0] = " + std::to_string(other) + ", but phy2log[1][" +
                std::to_string(other) + "] = " + std::to_string(map_.phy2log(1)[other]));
}

TEST_F(MapFormatEplbTest, Logcnt) {
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Erase(d, "logcnt"); }), "missing key \"logcnt\"");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) {
              At(Member(d, "logcnt"), 2).mutable_array_items().push_back(JsonValue::Int(1));
            }),
            "logcnt[2] has 17 entries, expected num_logical_experts = 16");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { At(At(Member(d, "logcnt"), 0), 0) = JsonValue::Int(0); }),
            "logcnt[0][0] = 0 is out of range [1, 6]");
  const int32_t count = map_.logcnt(2)[5];
  const int32_t wrong = count == 1 ? 2 : 1;
  EXPECT_EQ(
      ErrorAfter([&](JsonValue& d) { At(At(Member(d, "logcnt"), 2), 5) = JsonValue::Int(wrong); }),
      "logcnt[2][5] = " + std::to_string(wrong) + ", but phy2log holds expert 5 in " +
          std::to_string(count) + " slot(s)");
}

TEST_F(MapFormatEplbTest, ExpertWithoutSlot) {
  // Expert 0 replaced everywhere in layer 0 by expert 1: expert 0 has no slot.
  EXPECT_EQ(ErrorAfter([](JsonValue& d) {
              for (JsonValue& e : At(Member(d, "phy2log"), 0).mutable_array_items()) {
                if (e.int_value() == 0) e = JsonValue::Int(1);
              }
            }),
            "logical expert 0 of layer 0 has no slot in phy2log");
}

TEST_F(MapFormatEplbTest, IgnoresUnknownKeys) {
  absl::StatusOr<ParsedExpertMap> parsed = ParseExpertMapJson(Edit(json_, [](JsonValue& d) {
    d.mutable_object_members().emplace_back("comment", JsonValue::String("planned offline"));
  }));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->map, map_);
}

// ---- vllm-ascend -------------------------------------------------------------------------------

class MapFormatVllmAscendTest : public ::testing::Test {
 protected:
  // L=2, E=16, P=18, R=4: ranks hold 5, 5, 4, 4 slots.
  MapFormatVllmAscendTest() : map_(RandomMap({2, 16, 18, 4}, 8)) {
    json_ = ExpertMapToText(map_, MapFormat::kVllmAscend);
  }
  std::string ErrorAfter(const std::function<void(JsonValue&)>& edit,
                         const MapShapeHints& hints = {}) {
    return MapError(Edit(json_, edit), hints);
  }
  static JsonValue& Layer(JsonValue& d, size_t l) { return At(Member(d, "layer_list"), l); }
  static JsonValue& Device(JsonValue& d, size_t l, size_t r) {
    return At(Member(Layer(d, l), "device_list"), r);
  }
  static JsonValue& Experts(JsonValue& d, size_t l, size_t r) {
    return Member(Device(d, l, r), "device_expert");
  }

  ExpertMap map_;
  std::string json_;
};

TEST_F(MapFormatVllmAscendTest, AcceptsTheMinimalForm) {
  // vllm-ascend's own files may leave out layer_id, device_count and device_id.
  const std::string minimal = R"({"moe_layer_count": 2, "layer_list": [
      {"device_list": [{"device_expert": [0, 1]}, {"device_expert": [2, 3]}]},
      {"device_list": [{"device_expert": [3, 2]}, {"device_expert": [1, 0]}]}]})";
  absl::StatusOr<ParsedExpertMap> parsed = ParseExpertMapJson(minimal);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->format, MapFormat::kVllmAscend);
  EXPECT_EQ(parsed->map.num_ranks(), 2);
  EXPECT_EQ(parsed->map.num_logical_experts(), 4);
  EXPECT_THAT(parsed->map.phy2log(1), ::testing::ElementsAre(3, 2, 1, 0));
}

TEST_F(MapFormatVllmAscendTest, NumberOfExpertsComesFromTheHint) {
  // Experts 0-3 in use; the model has 6: experts 4 and 5 have no slot.
  const std::string json = R"({"moe_layer_count": 1, "layer_list": [
      {"device_list": [{"device_expert": [0, 1, 2]}, {"device_expert": [3, 0, 1]}]}]})";
  EXPECT_EQ(MapError(json, {.num_logical_experts = 6}),
            "logical expert 4 of layer 0 has no slot in phy2log");
  EXPECT_EQ(MapError(json, {.num_logical_experts = 3}),
            "layer_list[0].device_list[1].device_expert[0] = 3 is out of range [0, 2]");
  absl::StatusOr<ParsedExpertMap> parsed = ParseExpertMapJson(json, {.num_logical_experts = 4});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->map.num_logical_experts(), 4);
}

TEST_F(MapFormatVllmAscendTest, LayerList) {
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Erase(d, "layer_list"); }), "missing key \"layer_list\"");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Erase(d, "moe_layer_count"); }),
            "missing key \"moe_layer_count\"");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Member(d, "moe_layer_count") = JsonValue::Int(0); }),
            "moe_layer_count = 0 is out of range [1, 4096]");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Member(d, "moe_layer_count") = JsonValue::Int(3); }),
            "layer_list has 2 entries, expected moe_layer_count = 3");
  EXPECT_EQ(
      ErrorAfter([](JsonValue& d) { At(Member(d, "layer_list"), 1) = JsonValue::MakeArray(); }),
      "layer_list[1] is not an object");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Member(Layer(d, 1), "layer_id") = JsonValue::Int(0); }),
            "layer_list[1].layer_id = 0, expected 1 (layers are listed in order)");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Erase(Layer(d, 1), "device_list"); }),
            "missing key \"device_list\" in layer_list[1]");
  EXPECT_EQ(
      ErrorAfter([](JsonValue& d) { Member(Layer(d, 0), "device_count") = JsonValue::Int(3); }),
      "layer_list[0].device_count = 3, but layer_list[0].device_list has 4 entries");
  EXPECT_EQ(
      ErrorAfter([](JsonValue& d) { Member(Layer(d, 0), "device_list") = JsonValue::MakeArray(); }),
      "layer_list[0].device_list is empty");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) {
              Member(Layer(d, 1), "device_list").mutable_array_items().pop_back();
              Member(Layer(d, 1), "device_count") = JsonValue::Int(3);
            }),
            "layer_list[1].device_list has 3 entries, expected 4 (as layer_list[0].device_list)");
}

TEST_F(MapFormatVllmAscendTest, Devices) {
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Device(d, 0, 2) = JsonValue::Int(2); }),
            "layer_list[0].device_list[2] is not an object");
  EXPECT_EQ(
      ErrorAfter([](JsonValue& d) { Member(Device(d, 1, 3), "device_id") = JsonValue::Int(2); }),
      "layer_list[1].device_list[3].device_id = 2, expected 3 (devices are listed in rank "
      "order)");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Erase(Device(d, 0, 2), "device_expert"); }),
            "missing key \"device_expert\" in layer_list[0].device_list[2]");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Experts(d, 0, 1) = JsonValue::String("0,1"); }),
            "layer_list[0].device_list[1].device_expert is not an array");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { At(Experts(d, 1, 2), 1) = JsonValue::Int(-1); }),
            "layer_list[1].device_list[2].device_expert[1] = -1 is out of range [0, 65535]");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { At(Experts(d, 1, 2), 1) = JsonValue::Double(2.5); }),
            "layer_list[1].device_list[2].device_expert[1] = 2.5 is not an integer");
  EXPECT_EQ(ErrorAfter([](JsonValue& d) { Experts(d, 0, 3) = JsonValue::MakeArray(); }),
            "layer_list[0].device_list[3].device_expert is empty (every rank holds at least one "
            "slot)");
}

TEST_F(MapFormatVllmAscendTest, SlotCountsMustFollowTheLayout) {
  // 5, 5, 4, 4 → 5, 4, 5, 4: same total, but slots of rank 1 would be numbered as rank 2's.
  EXPECT_EQ(ErrorAfter([](JsonValue& d) {
              JsonValue moved = At(Experts(d, 0, 1), 0);
              Experts(d, 0, 1).mutable_array_items().erase(
                  Experts(d, 0, 1).mutable_array_items().begin());
              Experts(d, 0, 2).mutable_array_items().push_back(moved);
            }),
            "layer_list[0].device_list[1] holds 4 experts, expected 5 (18 slots on 4 ranks: 5 on "
            "ranks 0-1, 4 on the others; slots are numbered rank by rank)");
  // 4, 4, 5, 5 is 18 slots, but the larger ranks come first.
  const std::string reversed = R"({"moe_layer_count": 1, "layer_list": [{"device_list": [
      {"device_expert": [0, 1, 2, 3]}, {"device_expert": [4, 5, 6, 7]},
      {"device_expert": [8, 9, 10, 11, 12]}, {"device_expert": [13, 14, 15, 0, 1]}]}]})";
  EXPECT_EQ(MapError(reversed),
            "layer_list[0].device_list[0] holds 4 experts, expected 5 (18 slots on 4 ranks: 5 on "
            "ranks 0-1, 4 on the others; slots are numbered rank by rank)");
  // A later layer with other counts.
  EXPECT_EQ(ErrorAfter([](JsonValue& d) {
              Experts(d, 1, 3).mutable_array_items().push_back(JsonValue::Int(0));
            }),
            "layer_list[1].device_list[3] holds 5 experts, expected 4 (18 slots on 4 ranks: 5 on "
            "ranks 0-1, 4 on the others; slots are numbered rank by rank)");
}

TEST_F(MapFormatVllmAscendTest, HintsMustAgree) {
  EXPECT_EQ(MapError(json_, {.num_ranks = 8}),
            "the file has 4 ranks (entries of layer_list[0].device_list), but num_ranks = 8 was "
            "given");
  absl::StatusOr<ParsedExpertMap> parsed = ParseExpertMapJson(json_, {.num_ranks = 4});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->map, map_);
}

TEST_F(MapFormatVllmAscendTest, ShapeLimits) {
  // 2 ranks, 1 expert in 17 slots: P > 16 E fails ValidateShape.
  const std::string json = R"({"moe_layer_count": 1, "layer_list": [{"device_list": [
      {"device_expert": [0, 0, 0, 0, 0, 0, 0, 0, 0]}, {"device_expert": [0, 0, 0, 0, 0, 0, 0, 0]}]}]})";
  EXPECT_EQ(MapError(json),
            "the map implies an invalid shape: num_physical_experts = 17 is out of range [2, 16] "
            "(max(num_logical_experts, num_ranks) ≤ num_physical_experts ≤ 16 × "
            "num_logical_experts)");
}

// ---- sglang ------------------------------------------------------------------------------------

TEST(MapFormatSglangTest, RequiresTheRankCount) {
  const std::string json = ExpertMapToText(SmallMap(), MapFormat::kSglang);
  EXPECT_EQ(MapError(json), "sglang maps carry no rank count: num_ranks is required");
  absl::StatusOr<ParsedExpertMap> parsed = ParseExpertMapJson(json, {.num_ranks = 4});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->map, SmallMap());
  // Another rank count is another (valid) layout.
  parsed = ParseExpertMapJson(json, {.num_ranks = 3});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->map.num_ranks(), 3);
}

TEST(MapFormatSglangTest, Errors) {
  const MapShapeHints r2 = {.num_ranks = 2};
  EXPECT_EQ(MapError(R"({"physical_to_logical_map": {}})", r2),
            "physical_to_logical_map is not an array");
  EXPECT_EQ(MapError(R"({"physical_to_logical_map": []})", r2),
            "physical_to_logical_map has no rows");
  EXPECT_EQ(MapError(R"({"physical_to_logical_map": [[]]})", r2),
            "physical_to_logical_map[0] is empty");
  EXPECT_EQ(MapError(R"({"physical_to_logical_map": [[0, 1, 2], [0, 1]]})", r2),
            "physical_to_logical_map[1] has 2 entries, expected 3 (as physical_to_logical_map[0])");
  EXPECT_EQ(MapError(R"({"physical_to_logical_map": [[0, 1, 2], 5]})", r2),
            "physical_to_logical_map[1] is not an array");
  EXPECT_EQ(MapError(R"({"physical_to_logical_map": [[0, 1, "2"]]})", r2),
            "physical_to_logical_map[0][2] is not a number");
  EXPECT_EQ(MapError(R"({"physical_to_logical_map": [[0, 1, 1e999]]})", r2),
            "line 1, column 37: number out of the range of a double");
  EXPECT_EQ(MapError(R"({"physical_to_logical_map": [[0, 1, 2, 3]]})",
                     {.num_logical_experts = 3, .num_ranks = 2}),
            "physical_to_logical_map[0][3] = 3 is out of range [0, 2]");
  EXPECT_EQ(MapError(R"({"physical_to_logical_map": [[0, 1, 2, 3]]})", {.num_ranks = 8}),
            "the map implies an invalid shape: num_physical_experts = 4 is out of range [8, 64] "
            "(max(num_logical_experts, num_ranks) ≤ num_physical_experts ≤ 16 × "
            "num_logical_experts)");
  EXPECT_EQ(MapError(R"({"physical_to_logical_map": [[0, 2, 2, 3]]})", r2),
            "logical expert 1 of layer 0 has no slot in phy2log");
}

// ---- Load files --------------------------------------------------------------------------------

TEST(MapFormatLoadTest, RoundTripsExactly) {
  std::mt19937_64 rng(17);
  for (const auto& [layers, experts] :
       std::vector<std::pair<int, int>>{{1, 1}, {3, 7}, {58, 256}}) {
    LoadMatrix load;
    load.num_layers = layers;
    load.num_experts = experts;
    for (int i = 0; i < layers * experts; ++i) {
      switch (rng() % 4) {
        case 0:
          load.values.push_back(static_cast<double>(rng() % 100000));
          break;
        case 1:
          load.values.push_back(
              std::ldexp(static_cast<double>(rng() % 1000000), static_cast<int>(rng() % 80) - 40));
          break;
        case 2:
          load.values.push_back(0.0);
          break;
        default:
          load.values.push_back(static_cast<double>(rng()) / 3.0);
      }
    }
    const std::string json = LoadToJson(load);
    absl::StatusOr<LoadMatrix> parsed = ParseLoadJson(json);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, load);
  }
}

TEST(MapFormatLoadTest, Writes) {
  LoadMatrix load{2, 3, {1, 0.5, 0, 1e20, 2.25, 7}};
  EXPECT_EQ(LoadToJson(load), "{\n  \"load\": [\n    [1, 0.5, 0],\n    [1e+20, 2.25, 7]\n  ]\n}\n");
}

TEST(MapFormatLoadTest, Parses) {
  absl::StatusOr<LoadMatrix> load = ParseLoadJson(R"({"load": [[1, 2.5, 0], [3e2, -0.0, 4]]})");
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_EQ(load->num_layers, 2);
  EXPECT_EQ(load->num_experts, 3);
  EXPECT_EQ(load->values, (std::vector<double>{1, 2.5, 0, 300, 0, 4}));
}

TEST(MapFormatLoadTest, Errors) {
  EXPECT_EQ(LoadError(R"({"loads": [[1]]})"), "missing key \"load\"");
  EXPECT_EQ(LoadError("[[1]]"), "expected a JSON object at the top level, found an array");
  EXPECT_EQ(LoadError(R"({"load": [[1], [2]})"), "line 1, column 19: expected ',' or ']'");
  EXPECT_EQ(LoadError(R"({"load": {"0": [1]}})"), "load is not an array");
  EXPECT_EQ(LoadError(R"({"load": []})"), "load has no rows");
  EXPECT_EQ(LoadError(R"({"load": [[]]})"), "load[0] is empty");
  EXPECT_EQ(LoadError(R"({"load": [[1, 2], 3]})"), "load[1] is not an array");
  EXPECT_EQ(LoadError(R"({"load": [[1, 2, 3], [1, 2]]})"),
            "load[1] has 2 values, expected 3 (as load[0])");
  EXPECT_EQ(LoadError(R"({"load": [[0, 1, 2, 3, "4"]]})"), "load[0][4] is not a number");
  EXPECT_EQ(LoadError(R"({"load": [[0, 1, 2, 3, null]]})"), "load[0][4] is not a number");
  // JSON numbers beyond a double are refused where they are written.
  EXPECT_EQ(LoadError(R"({"load": [[0, 1], [0, 1e999]]})"),
            "line 1, column 23: number out of the range of a double");
  EXPECT_EQ(LoadError(R"({"load": [[0, -1e999]]})"),
            "line 1, column 15: number out of the range of a double");
  EXPECT_EQ(LoadError(R"({"load": [[0, 1], [2, 3], [4, -1]]})"), "load[2][1] = -1 is negative");
  EXPECT_EQ(LoadError(R"({"load": [[0, 1], [2, 3], [4, -0.5]]})"), "load[2][1] = -0.5 is negative");
}

TEST(MapFormatLoadTest, RaggedRowsNamedAt58x256) {
  LoadMatrix load{58, 256, std::vector<double>(58 * 256, 1.0)};
  load.values[3 * 256 + 17] = -1;
  EXPECT_EQ(LoadError(LoadToJson(load)), "load[3][17] = -1 is negative");
  std::string json = LoadToJson(LoadMatrix{58, 256, std::vector<double>(58 * 256, 1.0)});
  // Drop one value of row 2.
  size_t row = json.find("\n    [");
  for (int i = 0; i < 2; ++i) row = json.find("\n    [", row + 1);
  json.erase(row + 6, 3);  // "1, "
  EXPECT_EQ(LoadError(json), "load[2] has 255 values, expected 256 (as load[0])");
}

}  // namespace
}  // namespace eplb

namespace eplb {
namespace {

TEST(MapFormatStreamingTest, PiecesAddUpToTheWholeText) {
  const ExpertMap map = RandomMap({58, 256, 288, 32}, 3);
  for (MapFormat format : {MapFormat::kEplb, MapFormat::kVllmAscend, MapFormat::kSglang}) {
    std::vector<std::string> pieces;
    WriteExpertMapText(map, format, 9,
                       [&](absl::string_view piece) { pieces.emplace_back(piece); });
    std::string joined;
    for (const std::string& piece : pieces) {
      EXPECT_FALSE(piece.empty());
      EXPECT_LE(piece.size(), size_t{200} << 10);  // bounded, never the whole map at once
      joined += piece;
    }
    EXPECT_EQ(joined, ExpertMapToText(map, format, 9)) << MapFormatName(format);
    if (format == MapFormat::kEplb) {
      EXPECT_GT(pieces.size(), 10u);  // about 2 MB in pieces
    }
  }
}

}  // namespace
}  // namespace eplb
