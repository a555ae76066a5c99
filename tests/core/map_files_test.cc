#include "core/map_files.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace eplb {
namespace {

namespace fs = std::filesystem;

class MapFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           (std::string("eplb_map_files_") +
            ::testing::UnitTest::GetInstance()->current_test_info()->name() + "_" +
            std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (dir_ / name).string(); }
  void Write(const std::string& name, const std::string& text) const {
    std::ofstream(Path(name), std::ios::binary) << text;
  }
  std::string Read(const std::string& name) const {
    std::ifstream in(Path(name), std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }

  fs::path dir_;
};

ExpertMap TwoRankMap() {
  auto map = ExpertMap::FromPhy2Log(1, 3, SlotLayout(4, 2), {0, 1, 2, 0});
  EXPECT_TRUE(map.ok()) << map.status();
  return *map;
}

TEST_F(MapFilesTest, MapsRoundTripInEveryFormat) {
  const ExpertMap map = TwoRankMap();
  for (MapFormat format : {MapFormat::kEplb, MapFormat::kVllmAscend, MapFormat::kSglang}) {
    ASSERT_TRUE(WriteExpertMapFile(Path("map.json"), map, format, 5).ok());
    auto read = ReadExpertMapFile(Path("map.json"), {.num_ranks = 2});
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ(read->map, map);
    EXPECT_EQ(read->format, format);
    EXPECT_EQ(read->version, format == MapFormat::kEplb ? 5 : 0);
  }
}

TEST_F(MapFilesTest, ErrorsNameThePathAndKeepTheParsersCode) {
  Write("bad.json", R"({"load": [[1, -2]]})");
  auto load = ReadLoadFile(Path("bad.json"));
  ASSERT_EQ(load.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(load.status().message(), Path("bad.json") + ": load[0][1] = -2 is negative");

  Write("map.json", R"({"physical_to_logical_map": [[0, 1, 5]]})");
  auto map = ReadExpertMapFile(Path("map.json"), {.num_logical_experts = 3, .num_ranks = 1});
  ASSERT_EQ(map.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(map.status().message().substr(0, Path("map.json").size() + 2), Path("map.json") + ": ");

  EXPECT_EQ(ReadLoadFile(Path("none.json")).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ReadExpertMapFile(Path("none.json")).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(MapFilesTest, AFailedWriteLeavesTheOldFile) {
  Write("map.json", "old");
  fs::create_directories(dir_ / "sub");
  // The target is a directory: the rename fails, nothing is replaced, no temporary file is left.
  const absl::Status written = WriteExpertMapFile(Path("sub"), TwoRankMap(), MapFormat::kEplb, 1);
  EXPECT_FALSE(written.ok());
  EXPECT_EQ(Read("map.json"), "old");
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir_)) names.push_back(entry.path().filename());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"map.json", "sub"}));
  EXPECT_TRUE(fs::is_empty(dir_ / "sub"));
}

TEST_F(MapFilesTest, ReplicaSharesRoundTripAndBadOnesWriteNothing) {
  const ExpertMap map = TwoRankMap();  // expert 0 on slots 0 and 3
  const std::vector<double> share = {0.75, 1, 1, 0.25};
  ASSERT_TRUE(WriteExpertMapFile(Path("map.json"), map, MapFormat::kEplb, 2, nullptr, share).ok());
  auto read = ReadExpertMapFile(Path("map.json"));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->map, map);
  EXPECT_EQ(read->replica_share, share);
  const std::string before = Read("map.json");
  // Shares that do not add up, or a format that cannot carry them: refused, the file kept.
  const std::vector<double> bad = {0.5, 1, 1, 0.25};
  absl::Status written =
      WriteExpertMapFile(Path("map.json"), map, MapFormat::kEplb, 3, nullptr, bad);
  EXPECT_EQ(written.message(),
            "replica_share[0]: the shares of expert 0 (slots 0, 3) sum to 0.75, expected 1");
  written = WriteExpertMapFile(Path("map.json"), map, MapFormat::kSglang, 3, nullptr, share);
  EXPECT_EQ(written.message(), "replica shares are carried by the eplb format only, not sglang");
  EXPECT_EQ(Read("map.json"), before);
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir_)) names.push_back(entry.path().filename());
  EXPECT_EQ(names, (std::vector<std::string>{"map.json"}));
}

}  // namespace
}  // namespace eplb
