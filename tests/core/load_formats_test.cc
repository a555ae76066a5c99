#include "core/load_formats.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/file_io.h"
#include "core/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace eplb {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

const std::string kGolden = EPLB_GOLDEN_DIR;

// A safetensors file: the 8-byte little-endian header length, the header, the data.
std::string Safetensors(const std::string& header, const std::string& data) {
  std::string bytes(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return bytes + header + data;
}

std::string Int64s(const std::vector<int64_t>& values) {
  std::string out;
  for (int64_t v : values) {
    for (int i = 0; i < 8; ++i)
      out.push_back(static_cast<char>((static_cast<uint64_t>(v) >> (8 * i)) & 0xff));
  }
  return out;
}

TEST(SafetensorsTest, ReadsTheFormatsExample) {
  // The example of the format's description: "100_3" = [5, 0, 2, 1], "100_4" = [0, 7, 1, 0],
  // a 118-byte header padded to 120 with spaces, 192 bytes in all.
  const std::string header =
      R"({"100_3":{"dtype":"I64","shape":[4],"data_offsets":[0,32]},"100_4":{"dtype":"I64",)"
      R"("shape":[4],"data_offsets":[32,64]}}  )";
  ASSERT_EQ(header.size(), 120u);
  const std::string bytes = Safetensors(header, Int64s({5, 0, 2, 1, 0, 7, 1, 0}));
  ASSERT_EQ(bytes.size(), 192u);
  ASSERT_EQ(bytes.substr(0, 8), std::string("\x78\0\0\0\0\0\0\0", 8));
  auto tensors = ParseSafetensors(bytes);
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  ASSERT_EQ(tensors->size(), 2u);
  EXPECT_EQ((*tensors)[0].name, "100_3");
  EXPECT_EQ((*tensors)[0].dtype, "I64");
  EXPECT_THAT((*tensors)[0].shape, ElementsAre(4));
  EXPECT_THAT(*SafetensorsIntegers((*tensors)[0]), ElementsAre(5, 0, 2, 1));
  EXPECT_THAT(*SafetensorsIntegers((*tensors)[1]), ElementsAre(0, 7, 1, 0));
}

TEST(SafetensorsTest, SignedAndUnsignedIntegers) {
  const std::string header =
      R"({"a":{"dtype":"I32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[2],)"
      R"("data_offsets":[8,10]},"f":{"dtype":"F32","shape":[],"data_offsets":[10,14]}})";
  const std::string data = std::string("\xff\xff\xff\xff\x07\0\0\0\xff\x02", 10) + "abcd";
  // The tensors are views of the bytes: they must outlive them.
  const std::string bytes = Safetensors(header, data);
  auto tensors = ParseSafetensors(bytes);
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  EXPECT_THAT(*SafetensorsIntegers((*tensors)[0]), ElementsAre(-1, 7));
  EXPECT_THAT(*SafetensorsIntegers((*tensors)[1]), ElementsAre(255, 2));
  EXPECT_EQ(SafetensorsIntegers((*tensors)[2]).status().message(),
            "tensor \"f\" has dtype F32, expected an integer dtype");
}

TEST(SafetensorsTest, LyingOrTruncatedFilesAreRefused) {
  const std::string data = Int64s({1, 2, 3, 4});
  const auto header = [](const std::string& offsets, const std::string& shape = "[2]") {
    return absl::StrCat(R"({"x":{"dtype":"I64","shape":)", shape, R"(,"data_offsets":)", offsets,
                        "}}");
  };
  std::string huge_length = Safetensors(header("[0,16]"), data);
  huge_length.replace(0, 8, std::string("\0\0\0\0\0\0\0\x80", 8));  // 2^63
  const struct {
    std::string bytes;
    std::string message;
  } cases[] = {
      {"abc", "the file is 3 bytes, shorter than the 8-byte header length"},
      {huge_length, "the header length 9223372036854775808 is more than 100000000 bytes"},
      {Safetensors(header("[0,16]"), data).substr(0, 20),
       "the header length 55 runs past the end of the 20-byte file"},
      {Safetensors(header("[0,32]"), data.substr(0, 16)),
       "tensor \"x\": data_offsets [0, 32] are not within the 16 bytes of data"},
      {Safetensors(header("[0,24]", "[2]"), data.substr(0, 24)),
       "tensor \"x\": data_offsets [0, 24] hold 24 bytes, but its dtype and shape need 16"},
      {Safetensors(header("[8,24]"), data.substr(0, 24)),
       "tensor \"x\": data_offsets start at 8, expected 0 (tensors must follow each other without "
       "gaps or overlaps)"},
      {Safetensors(header("[0,16]"), data),
       "the tensors end at byte 16 of the data, which has 32 bytes"},
      {Safetensors(header("[16,0]"), data),
       "tensor \"x\": data_offsets [16, 0] are not within the 32 bytes of data"},
      {Safetensors(header("[0,16]", "[4611686018427387904,4]"), data),
       "tensor \"x\": data_offsets [0, 16] hold 16 bytes, but its dtype and shape need more than "
       "the file has"},
      {Safetensors(header("[0,16]", "[-2]"), data),
       "tensor \"x\": a shape entry is not a non-negative integer"},
      {Safetensors(R"({"x":{"dtype":"Q9","shape":[2],"data_offsets":[0,16]}})", data.substr(0, 16)),
       "tensor \"x\": dtype is not one of the format's (BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, "
       "F16, BF16, I32, U32, F32, F64, I64, U64)"},
      {Safetensors(R"({"x":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},)"
                   R"("y":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})",
                   data.substr(0, 8)),
       "tensor \"y\": data_offsets start at 0, expected 8 (tensors must follow each other without "
       "gaps or overlaps)"},
      {Safetensors(R"({"x":1})", ""), "tensor \"x\": not an object"},
      {Safetensors(R"([1])", ""), "header: expected a JSON object"},
      {Safetensors(R"({"__metadata__":{"a":1}})", ""), "header: __metadata__.a is not a string"},
  };
  for (const auto& c : cases) {
    auto tensors = ParseSafetensors(c.bytes);
    ASSERT_FALSE(tensors.ok()) << c.message;
    EXPECT_EQ(tensors.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(tensors.status().message(), c.message);
  }
  // Empty files of tensors and metadata are fine.
  EXPECT_TRUE(ParseSafetensors(Safetensors("{}      ", "")).ok());
  EXPECT_TRUE(ParseSafetensors(Safetensors(R"({"__metadata__":{"a":"b"}})", "")).ok());
}

class TrtllmStatsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        fs::temp_directory_path() /
        absl::StrCat("eplb_stats_", ::testing::UnitTest::GetInstance()->current_test_info()->name(),
                     "_", ::getpid());
    fs::remove_all(dir_);
    fs::copy(kGolden + "/trtllm_stats", dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(TrtllmStatsTest, SumsRanksAndIterationsPerLayer) {
  auto read = ReadEngineLoad(dir_.string(), LoadFormat::kTrtllmStats);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->load.num_layers, 2);
  EXPECT_EQ(read->load.num_experts, 4);
  EXPECT_THAT(read->load.values, ElementsAre(10, 4, 3, 5, 3, 8, 8, 3));
  EXPECT_EQ(read->layer_ids->DebugString(), "MoE layers 1-2 of 3 hidden layers");
  EXPECT_EQ(read->steps, 2);
  EXPECT_EQ(read->files, 2);  // rank0_raw.safetensors is skipped

  auto first = ReadEngineLoad(dir_.string(), LoadFormat::kTrtllmStats,
                              {.iterations = std::make_pair(int64_t{100}, int64_t{101})});
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_THAT(first->load.values, ElementsAre(5, 3, 2, 4, 1, 8, 2, 1));
  EXPECT_EQ(first->steps, 1);

  // Layer ids choose and order the layers; a layer they name must have statistics.
  auto second = ReadEngineLoad(dir_.string(), LoadFormat::kTrtllmStats,
                               {.layer_ids = *LayerIds::Parse("2", 4)});
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_THAT(second->load.values, ElementsAre(3, 8, 8, 3));
  auto missing = ReadEngineLoad(dir_.string(), LoadFormat::kTrtllmStats,
                                {.layer_ids = *LayerIds::Parse("1-3")});
  EXPECT_EQ(missing.status().message(),
            absl::StrCat(dir_.string(),
                         " holds no statistics of layer 3, which the layer ids name "
                         "(MoE layers 1-3 of 4 hidden layers)"));
  auto none = ReadEngineLoad(dir_.string(), LoadFormat::kTrtllmStats,
                             {.iterations = std::make_pair(int64_t{7}, int64_t{9})});
  EXPECT_EQ(none.status().message(),
            absl::StrCat(dir_.string(), " holds no statistics of iterations 7 to 8"));
}

TEST_F(TrtllmStatsTest, BadDumpsAreRefused) {
  // A rank that did not record one of the iterations.
  fs::copy_file(kGolden + "/trtllm_stats/rank0_raw.safetensors", dir_ / "rank2.safetensors");
  auto read = ReadEngineLoad(dir_.string(), LoadFormat::kTrtllmStats);
  EXPECT_THAT(
      read.status().message(),
      HasSubstr("rank2.safetensors: tensor \"100_1\" is not of shape [4] (num_experts in "));
  fs::remove(dir_ / "rank2.safetensors");
  {
    std::ofstream(dir_ / "rank3.safetensors", std::ios::binary) << Safetensors(
        R"({"100_1":{"dtype":"I64","shape":[4],"data_offsets":[0,32]}})", Int64s({1, 1, 1, 1}));
    std::ofstream(dir_ / "rank4.safetensors", std::ios::binary) << Safetensors(
        R"({"102_1":{"dtype":"I64","shape":[4],"data_offsets":[0,32]}})", Int64s({1, 1, 1, 1}));
  }
  read = ReadEngineLoad(dir_.string(), LoadFormat::kTrtllmStats);
  EXPECT_EQ(read.status().message(),
            absl::StrCat(dir_.string(),
                         ": layer 2 has statistics of 2 iterations (100 to 101), "
                         "layer 1 of 3 (100 to 102)"));
  {
    std::ofstream(dir_ / "rank4.safetensors", std::ios::binary) << Safetensors(
        R"({"100_x":{"dtype":"I64","shape":[4],"data_offsets":[0,32]}})", Int64s({1, 1, 1, 1}));
  }
  read = ReadEngineLoad(dir_.string(), LoadFormat::kTrtllmStats);
  EXPECT_EQ(read.status().message(),
            absl::StrCat((dir_ / "rank4.safetensors").string(),
                         ": tensor \"100_x\" is not named ITERATION_LAYER (TensorRT-LLM's "
                         "statistics)"));
  {
    std::ofstream(dir_ / "rank4.safetensors", std::ios::binary) << Safetensors(
        R"({"100_1":{"dtype":"I64","shape":[4],"data_offsets":[0,32]}})", Int64s({1, -1, 1, 1}));
  }
  read = ReadEngineLoad(dir_.string(), LoadFormat::kTrtllmStats);
  EXPECT_EQ(read.status().message(), absl::StrCat((dir_ / "rank4.safetensors").string(),
                                                  ": tensor \"100_1\"[1] = -1 is negative"));
  std::ofstream(dir_ / "meta_info.json") << "null";
  read = ReadEngineLoad(dir_.string(), LoadFormat::kTrtllmStats);
  EXPECT_EQ(read.status().message(),
            absl::StrCat((dir_ / "meta_info.json").string(),
                         ": expected {\"num_experts\": E, …} with E in [1, 65536] (rank 0 writes "
                         "null when it recorded nothing)"));
  fs::remove(dir_ / "meta_info.json");
  EXPECT_EQ(ReadEngineLoad(dir_.string(), LoadFormat::kTrtllmStats).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(SglangLoadTest, SumsStepsAndKeepsTheMoeLayers) {
  const std::string path = kGolden + "/sglang_logical_count.json";
  auto read = ReadEngineLoad(path, LoadFormat::kSglang, {.layer_ids = *LayerIds::Parse("1-3")});
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->load.num_layers, 3);
  EXPECT_THAT(read->load.values, ElementsAre(6, 1, 3, 2, 2, 7, 1, 2, 1, 4, 1, 4));
  EXPECT_EQ(read->steps, 2);
  // Without layer ids every row is a layer, the dense one too.
  auto all = ReadEngineLoad(path, LoadFormat::kSglang);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->load.num_layers, 4);
  // [H][E] without steps.
  auto flat = ParseSglangLoad(R"({"logical_count": [[1, 2], [3, 4]]})", std::nullopt);
  ASSERT_TRUE(flat.ok()) << flat.status();
  EXPECT_THAT(flat->load.values, ElementsAre(1, 2, 3, 4));
  EXPECT_EQ(flat->steps, 1);
  const struct {
    std::string json;
    std::string message;
  } cases[] = {
      {R"({"load": [[1]]})",
       "expected {\"logical_count\": [[…E…] × H]} or [steps][H][E] "
       "(SGLang's expert distribution)"},
      {R"({"logical_count": []})", "logical_count is not a non-empty list"},
      {R"({"logical_count": [[1, 2], [3]]})", "logical_count[1] has 1 values, expected 2"},
      {R"({"logical_count": [[[1, 2]], [[3, 4], [5, 6]]]})",
       "logical_count[1] has 2 rows, expected 1"},
      {R"({"logical_count": [[1, -2]]})", "load[0][1] = -2 is negative"},
      {R"({"logical_count": [[1, "x"]]})", "logical_count[0][1] is not a number"},
  };
  for (const auto& c : cases) {
    auto parsed = ParseSglangLoad(c.json, std::nullopt);
    ASSERT_FALSE(parsed.ok()) << c.message;
    EXPECT_EQ(parsed.status().message(), c.message);
  }
  auto misnumbered =
      ParseSglangLoad(R"({"logical_count": [[1, 2], [3, 4]]})", *LayerIds::Parse("1-2"));
  EXPECT_EQ(misnumbered.status().message(),
            "logical_count has 2 rows, but the layer ids name 3 hidden layers (MoE layers 1-2 of 3 "
            "hidden layers)");
  EXPECT_EQ(ParseLoadFormat("csv").status().message(),
            "unknown load format \"csv\": expected eplb, sglang or trtllm-stats");
}

}  // namespace
}  // namespace eplb
