#include "core/file_io.h"

#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace eplb {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

class FileIoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const testing::TestInfo* info = testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           (std::string("eplb_file_io_") + info->name() + "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  static void WriteWithStream(const std::string& path, const std::string& contents) {
    std::ofstream out(path, std::ios::binary);
    out << contents;
  }

  // The names of the entries of the test directory.
  std::vector<std::string> Entries() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_)) {
      names.push_back(entry.path().filename().string());
    }
    return names;
  }

  fs::path dir_;
};

TEST_F(FileIoTest, ReadsWholeFile) {
  const std::string contents = std::string("binary\0data\n", 12) + std::string(100000, 'x');
  WriteWithStream(Path("f"), contents);
  absl::StatusOr<std::string> read = ReadFileToString(Path("f"));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, contents);
}

TEST_F(FileIoTest, ReadsEmptyFile) {
  WriteWithStream(Path("empty"), "");
  absl::StatusOr<std::string> read = ReadFileToString(Path("empty"));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, "");
}

TEST_F(FileIoTest, MissingFileIsNotFound) {
  absl::StatusOr<std::string> read = ReadFileToString(Path("missing.json"));
  EXPECT_EQ(read.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(read.status().message(),
            "cannot open " + Path("missing.json") + ": No such file or directory");
}

TEST_F(FileIoTest, DirectoryIsFailedPrecondition) {
  absl::StatusOr<std::string> read = ReadFileToString(dir_.string());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(read.status().message(), dir_.string() + " is not a regular file (a directory)");
}

TEST_F(FileIoTest, FifoIsRefusedWithoutBlocking) {
  ASSERT_EQ(::mkfifo(Path("fifo").c_str(), 0600), 0);
  absl::StatusOr<std::string> read = ReadFileToString(Path("fifo"));
  EXPECT_EQ(read.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(read.status().message(), Path("fifo") + " is not a regular file");
}

TEST_F(FileIoTest, UnreadableFileIsFailedPrecondition) {
  if (::geteuid() == 0) GTEST_SKIP() << "root reads every file";
  WriteWithStream(Path("secret"), "x");
  ASSERT_EQ(::chmod(Path("secret").c_str(), 0), 0);
  absl::StatusOr<std::string> read = ReadFileToString(Path("secret"));
  EXPECT_EQ(read.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(read.status().message(), "cannot open " + Path("secret") + ": Permission denied");
}

TEST_F(FileIoTest, RefusesFilesOverTheLimit) {
  WriteWithStream(Path("big"), std::string(1001, 'a'));
  absl::StatusOr<std::string> read = ReadFileToString(Path("big"), 1000);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(read.status().message(), Path("big") + " is 1001 bytes, more than the limit of 1000");
  read = ReadFileToString(Path("big"), 1001);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->size(), 1001u);
}

TEST_F(FileIoTest, ReadsFilesWithoutAKnownSize) {
  // /proc files report size 0 but have contents.
  absl::StatusOr<std::string> read = ReadFileToString("/proc/self/status");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_THAT(*read, HasSubstr("Name:"));
  read = ReadFileToString("/proc/self/status", 10);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(FileIoTest, WritesNewFile) {
  ASSERT_TRUE(WriteFileAtomically(Path("new.json"), "{\"a\": 1}\n").ok());
  absl::StatusOr<std::string> read = ReadFileToString(Path("new.json"));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, "{\"a\": 1}\n");
  EXPECT_THAT(Entries(), UnorderedElementsAre("new.json"));

  const mode_t mask = ::umask(0);
  ::umask(mask);
  struct stat st;
  ASSERT_EQ(::stat(Path("new.json").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644 & ~mask);
}

TEST_F(FileIoTest, ReplacesExistingFile) {
  WriteWithStream(Path("map.json"), std::string(10000, 'o'));
  ASSERT_TRUE(WriteFileAtomically(Path("map.json"), "new").ok());
  EXPECT_EQ(*ReadFileToString(Path("map.json")), "new");
  ASSERT_TRUE(WriteFileAtomically(Path("map.json"), "").ok());
  EXPECT_EQ(*ReadFileToString(Path("map.json")), "");
  EXPECT_THAT(Entries(), UnorderedElementsAre("map.json"));
}

TEST_F(FileIoTest, WritesRelativePaths) {
  const fs::path cwd = fs::current_path();
  fs::current_path(dir_);
  const absl::Status status = WriteFileAtomically("relative.json", "r");
  fs::current_path(cwd);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(*ReadFileToString(Path("relative.json")), "r");
}

TEST_F(FileIoTest, MissingParentDirectoryFails) {
  const std::string path = Path("no/such/dir/map.json");
  const absl::Status status = WriteFileAtomically(path, "x");
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("cannot write " + path));
  EXPECT_THAT(status.message(), HasSubstr("No such file or directory"));
  EXPECT_TRUE(Entries().empty());
}

TEST_F(FileIoTest, PathThatIsADirectoryIsLeftAlone) {
  fs::create_directory(Path("target"));
  WriteWithStream(Path("target/inside"), "keep");
  const absl::Status status = WriteFileAtomically(Path("target"), "x");
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("cannot write " + Path("target")));
  EXPECT_THAT(status.message(), HasSubstr("Is a directory"));
  // No temporary file left behind; the directory is untouched.
  EXPECT_THAT(Entries(), UnorderedElementsAre("target"));
  EXPECT_EQ(*ReadFileToString(Path("target/inside")), "keep");
}

TEST_F(FileIoTest, FailedWriteLeavesExistingFileUnchanged) {
  WriteWithStream(Path("map.json"), "old contents");
  // Limit the size of files this process may write, so that the write itself fails (also for
  // root); SIGXFSZ would otherwise end the process.
  struct rlimit old_limit;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit limit = old_limit;
  limit.rlim_cur = 4096;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &limit), 0);
  const absl::Status status = WriteFileAtomically(Path("map.json"), std::string(100000, 'n'));
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &old_limit), 0);
  std::signal(SIGXFSZ, old_handler);

  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("cannot write " + Path("map.json")));
  EXPECT_THAT(status.message(), HasSubstr("File too large"));
  EXPECT_EQ(*ReadFileToString(Path("map.json")), "old contents");
  EXPECT_THAT(Entries(), UnorderedElementsAre("map.json"));
}

TEST_F(FileIoTest, EmptyPathIsInvalid) {
  EXPECT_EQ(WriteFileAtomically("", "x").code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(FileIoTest, ConcurrentWritersNeverTearTheFile) {
  const std::string path = Path("shared.json");
  std::vector<std::string> payloads;
  for (int i = 0; i < 8; ++i)
    payloads.push_back(std::string(20000 + i, static_cast<char>('a' + i)));
  std::vector<std::thread> writers;
  std::atomic<int> failures{0};
  for (int i = 0; i < 8; ++i) {
    writers.emplace_back([&, i] {
      for (int k = 0; k < 20; ++k) {
        if (!WriteFileAtomically(path, payloads[i]).ok()) ++failures;
      }
    });
  }
  // Readers see whole files only.
  std::set<std::string> allowed(payloads.begin(), payloads.end());
  for (int k = 0; k < 200; ++k) {
    absl::StatusOr<std::string> read = ReadFileToString(path);
    if (read.ok()) {
      ASSERT_TRUE(allowed.count(*read)) << "torn file of " << read->size() << " bytes";
    }
  }
  for (std::thread& t : writers) t.join();
  EXPECT_EQ(failures.load(), 0);
  absl::StatusOr<std::string> read = ReadFileToString(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(allowed.count(*read));
  EXPECT_THAT(Entries(), UnorderedElementsAre("shared.json"));
}

}  // namespace
}  // namespace eplb

namespace eplb {
namespace {

class AtomicFileWriterTest : public FileIoTest {};

TEST_F(AtomicFileWriterTest, PiecesBecomeTheFileOnCommitOnly) {
  WriteWithStream(Path("map.json"), "old");
  auto writer = AtomicFileWriter::Create(Path("map.json"));
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE(writer->Append("new ").ok());
  ASSERT_TRUE(writer->Append("contents").ok());
  // Nothing is visible before Commit().
  EXPECT_EQ(*ReadFileToString(Path("map.json")), "old");
  ASSERT_TRUE(writer->Commit().ok());
  EXPECT_EQ(*ReadFileToString(Path("map.json")), "new contents");
  EXPECT_THAT(Entries(), UnorderedElementsAre("map.json"));
  const absl::Status again = writer->Append("more");
  EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(again.message(), Path("map.json") + " is already committed");
}

TEST_F(AtomicFileWriterTest, AbandonedWriterLeavesNoTrace) {
  WriteWithStream(Path("map.json"), "old");
  {
    auto writer = AtomicFileWriter::Create(Path("map.json"));
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE(writer->Append("half a map").ok());
    EXPECT_EQ(Entries().size(), 2u);  // the target and the temporary file
  }
  EXPECT_EQ(*ReadFileToString(Path("map.json")), "old");
  EXPECT_THAT(Entries(), UnorderedElementsAre("map.json"));
}

TEST_F(AtomicFileWriterTest, CreateFailsInAMissingDirectory) {
  auto writer = AtomicFileWriter::Create(Path("no/such/dir/map.json"));
  EXPECT_EQ(writer.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(writer.status().message(), HasSubstr("cannot write " + Path("no/such/dir/map.json")));
}

}  // namespace
}  // namespace eplb
