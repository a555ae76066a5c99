// The corpus of bad inputs (tests/fuzz/bad/<reader>/): each is refused by its reader with
// INVALID_ARGUMENT, and none crashes it.
#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/file_io.h"
#include "core/load_formats.h"
#include "core/map_format.h"
#include "core/safetensors.h"
#include "gtest/gtest.h"

namespace eplb {
namespace {

namespace fs = std::filesystem;

std::vector<fs::path> Files(const std::string& reader) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(fs::path(EPLB_BAD_INPUTS_DIR) / reader)) {
    files.push_back(entry.path());
  }
  EXPECT_GE(files.size(), 5u) << reader;
  return files;
}

void ExpectRefused(const absl::Status& status, const fs::path& file) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << file << ": " << status;
}

TEST(BadInputsTest, EveryReaderRefusesItsCorpus) {
  for (const fs::path& file : Files("map_json")) {
    const std::string text = *ReadFileToString(file.string());
    ExpectRefused(ParseExpertMapJson(text, {.num_ranks = 1}).status(), file);
    ExpectRefused(ParseExpertMap(text, {.num_ranks = 1}).status(), file);
  }
  for (const fs::path& file : Files("map_yaml")) {
    ExpectRefused(ParseExpertMap(*ReadFileToString(file.string()), {.num_ranks = 2}).status(),
                  file);
  }
  for (const fs::path& file : Files("load")) {
    const std::string text = *ReadFileToString(file.string());
    const bool sglang = text.find("logical_count") != std::string::npos;
    ExpectRefused(
        sglang ? ParseSglangLoad(text, std::nullopt).status() : ParseLoadJson(text).status(), file);
  }
  for (const fs::path& file : Files("safetensors")) {
    ExpectRefused(ParseSafetensors(*ReadFileToString(file.string())).status(), file);
  }
}

}  // namespace
}  // namespace eplb
