// Checkpoint shards: CRC32C, the round trip, every rejection the loader makes, and the
// atomic write (a crash mid-save leaves the previous shard readable).
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/checkpoint_internal.h"
#include "gradcomm/checkpoint.h"
#include "gradcomm/error.h"

namespace gradcomm {
namespace {

namespace fs = std::filesystem;

std::span<const std::byte> bytes_of(const std::string& s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

template <typename T>
std::span<const std::byte> bytes_of(const std::vector<T>& v) {
  return std::as_bytes(std::span<const T>(v));
}

std::vector<std::byte> read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(chars.size());
  std::memcpy(out.data(), chars.data(), chars.size());
  return out;
}

std::uint32_t get_u32(const std::vector<std::byte>& b, std::size_t at) { return detail::get_le32(&b[at]); }
void put_u32(std::vector<std::byte>& b, std::size_t at, std::uint32_t v) { detail::put_le32(&b[at], v); }

// Recomputes the header CRC after a deliberate header edit, so that the test reaches the
// check it targets instead of stopping at the header checksum.
void reseal_header(std::vector<std::byte>& b) {
  const std::size_t header_length = get_u32(b, 12);
  put_u32(b, header_length - 4, crc32c(std::span<const std::byte>(b.data(), header_length - 4)));
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "gradcomm-ckpt-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A shard of `rank` in a world of 4, saved by "dgc", with two blobs.
  std::string write_shard(const std::string& name, int rank = 1, std::int64_t step = 42) {
    ShardContents c;
    c.rank = rank;
    c.world_size = 4;
    c.step = step;
    c.save_id = 0x1234567890abcdefull;
    c.compressor = "dgc";
    c.compressor_state = bytes_of(state_);
    c.blobs = blobs_;
    const std::string path = (dir_ / name).string();
    write_checkpoint_shard(path, c);
    return path;
  }

  // Expects `bytes` to be rejected with kCorruptPayload and `needle` in the message.
  void expect_rejected(const std::vector<std::byte>& bytes, const std::string& needle,
                       ShardExpectation expect = {1, 4, "dgc"}) {
    try {
      CheckpointShard::parse(bytes, expect, "test.ckpt");
      ADD_FAILURE() << "accepted a shard that should fail with '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kCorruptPayload) << e.what();
      EXPECT_NE(e.message().find(needle), std::string::npos) << "wanted '" << needle << "' in: " << e.what();
      EXPECT_NE(e.message().find("test.ckpt"), std::string::npos) << "the message must name the file";
    }
  }

  fs::path dir_;
  std::vector<float> params_ = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f};
  std::string state_ = "residuals-and-momenta";
  std::string optimizer_ = "adam m and v";
  std::vector<CheckpointBlob> blobs_ = {{"params", bytes_of(params_)}, {"optimizer", bytes_of(optimizer_)}};
};

TEST(Crc32c, KnownVectors) {
  // RFC 3720 (iSCSI) appendix B.4 and the usual check value.
  EXPECT_EQ(crc32c(bytes_of(std::string("123456789"))), 0xE3069283u);
  EXPECT_EQ(crc32c({}), 0u);
  std::vector<std::uint8_t> zeros(32, 0), ones(32, 0xff), ramp(32);
  for (int i = 0; i < 32; ++i) ramp[i] = static_cast<std::uint8_t>(i);
  EXPECT_EQ(crc32c(bytes_of(zeros)), 0x8A9136AAu);
  EXPECT_EQ(crc32c(bytes_of(ones)), 0x62A8AB43u);
  EXPECT_EQ(crc32c(bytes_of(ramp)), 0x46DD794Eu);
}

TEST(Crc32c, HardwareAndPortableAgreeAndChain) {
  std::mt19937 rng(7);
  std::vector<std::uint8_t> data(4099);
  for (auto& x : data) x = static_cast<std::uint8_t>(rng());
  const auto all = bytes_of(data);
  for (std::size_t n : {0u, 1u, 7u, 8u, 9u, 63u, 1000u, 4099u}) {
    EXPECT_EQ(crc32c(all.first(n)), detail::crc32c_portable(all.first(n))) << n;
    for (std::size_t cut : {std::size_t{0}, n / 3, n}) {
      EXPECT_EQ(crc32c(all.subspan(cut, n - cut), crc32c(all.first(cut))), crc32c(all.first(n))) << n << " " << cut;
      EXPECT_EQ(detail::crc32c_portable(all.subspan(cut, n - cut), detail::crc32c_portable(all.first(cut))),
                crc32c(all.first(n)));
    }
  }
}

TEST_F(CheckpointTest, RoundTrip) {
  const std::string path = write_shard("a.ckpt");
  const CheckpointShard shard = read_checkpoint_shard(path, {1, 4, "dgc"});
  EXPECT_EQ(shard.format_version, kCheckpointFormatVersion);
  EXPECT_EQ(shard.rank, 1);
  EXPECT_EQ(shard.world_size, 4);
  EXPECT_EQ(shard.step, 42);
  EXPECT_EQ(shard.save_id, 0x1234567890abcdefull);
  EXPECT_EQ(shard.compressor, "dgc");
  const auto state = shard.compressor_state();
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(state.data()), state.size()), state_);
  const auto params = shard.blob("params");
  ASSERT_EQ(params.size(), params_.size() * sizeof(float));
  EXPECT_EQ(std::memcmp(params.data(), params_.data(), params.size()), 0);
  EXPECT_TRUE(shard.has("optimizer"));
  EXPECT_FALSE(shard.has("nope"));
  ASSERT_EQ(shard.sections().size(), 3u);
  try {
    shard.blob("nope");
    ADD_FAILURE() << "no throw for a missing blob";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(e.message().find("'params'"), std::string::npos) << e.what();
  }
  EXPECT_EQ(checkpoint_shard_path("/x/step7", 3), "/x/step7.rank3.ckpt");
  // Overwriting an existing shard replaces it and leaves no temp file behind.
  write_shard("a.ckpt", 1, 43);
  EXPECT_EQ(read_checkpoint_shard(path, {1, 4, "dgc"}).step, 43);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

TEST_F(CheckpointTest, EmptyStateAndNoBlobs) {
  ShardContents c;
  c.compressor = "none";
  const std::string path = (dir_ / "e.ckpt").string();
  write_checkpoint_shard(path, c);
  const CheckpointShard shard = read_checkpoint_shard(path, {0, 1, "none"});
  EXPECT_TRUE(shard.compressor_state().empty());
  EXPECT_EQ(shard.sections().size(), 1u);
}

TEST_F(CheckpointTest, RejectsAnotherRanksShard) {
  expect_rejected(read_file(write_shard("a.ckpt", 2)), "shard of rank 2, not of rank 1");
}

TEST_F(CheckpointTest, RejectsAnotherWorldSize) {
  expect_rejected(read_file(write_shard("a.ckpt")), "saved by a world of 4 ranks; this run has 8", {1, 8, "dgc"});
}

TEST_F(CheckpointTest, RejectsAnotherCompressor) {
  expect_rejected(read_file(write_shard("a.ckpt")), "saved with compressor 'dgc'; this run uses 'onebit'",
                  {1, 4, "onebit"});
}

TEST_F(CheckpointTest, RejectsAnotherFormatVersion) {
  auto bytes = read_file(write_shard("a.ckpt"));
  put_u32(bytes, 8, kCheckpointFormatVersion + 1);
  reseal_header(bytes);
  expect_rejected(bytes, "format version 2; this build reads version 1");
}

TEST_F(CheckpointTest, RejectsBadMagic) {
  auto bytes = read_file(write_shard("a.ckpt"));
  bytes[0] = std::byte{'X'};
  expect_rejected(bytes, "not a gradcomm checkpoint shard");
}

TEST_F(CheckpointTest, RejectsCorruptHeader) {
  auto bytes = read_file(write_shard("a.ckpt"));
  bytes[24] ^= std::byte{1};  // the step
  expect_rejected(bytes, "header checksum mismatch");
  bytes = read_file(write_shard("a.ckpt"));
  put_u32(bytes, 12, get_u32(bytes, 12) + 1);  // the header length field
  expect_rejected(bytes, "header length field");
}

TEST_F(CheckpointTest, RejectsBadPayloadChecksumAtEveryByte) {
  const auto good = read_file(write_shard("a.ckpt"));
  const std::size_t header_length = get_u32(good, 12);
  for (std::size_t at = header_length; at < good.size(); ++at) {
    auto bytes = good;
    bytes[at] ^= std::byte{0x40};
    SCOPED_TRACE(at);
    expect_rejected(bytes, "payload checksum mismatch");
  }
}

TEST_F(CheckpointTest, RejectsEveryTruncation) {
  const auto good = read_file(write_shard("a.ckpt"));
  for (std::size_t size = 0; size < good.size(); ++size) {
    SCOPED_TRACE(size);
    expect_rejected(std::vector<std::byte>(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(size)),
                    "truncated");
  }
}

TEST_F(CheckpointTest, RejectsTrailingBytes) {
  auto bytes = read_file(write_shard("a.ckpt"));
  bytes.push_back(std::byte{0});
  expect_rejected(bytes, "1 unexpected bytes after");
}

// A forged shard whose checksums match but whose section table lies.
TEST_F(CheckpointTest, RejectsBadSectionTableWithValidChecksums) {
  auto bytes = read_file(write_shard("a.ckpt"));
  const std::size_t header_length = get_u32(bytes, 12);
  auto reseal_payload = [&](std::vector<std::byte>& b) {
    put_u32(b, 48, crc32c(std::span<const std::byte>(b).subspan(header_length)));
    reseal_header(b);
  };
  auto forged = bytes;
  put_u32(forged, header_length, 0xfffffff0u);  // first section's name length
  reseal_payload(forged);
  expect_rejected(forged, "runs past the end");
  forged = bytes;
  forged[header_length + 4] = std::byte{'X'};  // first section is no longer the compressor's
  reseal_payload(forged);
  expect_rejected(forged, "expected 'gradcomm.compressor'");
  forged = bytes;
  put_u32(forged, 52, 1000);  // section count
  reseal_header(forged);
  expect_rejected(forged, "section count 1000");
}

TEST_F(CheckpointTest, MissingFileAndBadArguments) {
  const std::string path = (dir_ / "missing.ckpt").string();
  try {
    read_checkpoint_shard(path, {0, 1, "none"});
    ADD_FAILURE() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
    EXPECT_NE(e.message().find(path), std::string::npos) << e.what();
  }
  ShardContents c;
  c.rank = 4;
  c.world_size = 4;
  EXPECT_THROW(write_checkpoint_shard((dir_ / "x").string(), c), Error);
  c.rank = 0;
  std::vector<CheckpointBlob> twice = {{"p", {}}, {"p", {}}};
  c.blobs = twice;
  EXPECT_THROW(write_checkpoint_shard((dir_ / "x").string(), c), Error);
  std::vector<CheckpointBlob> reserved = {{"gradcomm.compressor", {}}};
  c.blobs = reserved;
  EXPECT_THROW(write_checkpoint_shard((dir_ / "x").string(), c), Error);
  std::vector<CheckpointBlob> unnamed = {{"", {}}};
  c.blobs = unnamed;
  EXPECT_THROW(write_checkpoint_shard((dir_ / "x").string(), c), Error);
  EXPECT_THROW(checkpoint_shard_path("", 0), Error);
  EXPECT_FALSE(fs::exists(dir_ / "x"));
}

TEST_F(CheckpointTest, FailedSaveLeavesThePreviousShardAndNoTempFile) {
  const std::string path = write_shard("a.ckpt", 1, 1);
  // A directory in the way of the rename: the write succeeds, the rename fails.
  fs::create_directory(dir_ / "b.ckpt");
  try {
    write_shard("b.ckpt", 1, 2);
    ADD_FAILURE() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
    EXPECT_NE(e.message().find("rename"), std::string::npos) << e.what();
  }
  // A directory that does not exist: the temp file cannot be created.
  EXPECT_THROW(write_shard("no/such/dir.ckpt"), Error);
  EXPECT_EQ(read_checkpoint_shard(path, {1, 4, "dgc"}).step, 1);
  for (const auto& entry : fs::directory_iterator(dir_)) {
    EXPECT_EQ(entry.path().string().find(".tmp."), std::string::npos) << entry.path();
  }
}

// The process dies in the middle of writing a shard over an existing one (a blob runs into
// an unreadable page, so the save faults after 4 MiB were written): the old shard must
// still load, and what the dead save left is only a temp file.
TEST_F(CheckpointTest, CrashWhileSavingLeavesThePreviousShardIntact) {
  // "fast" (fork at this point): the child must write into this test's directory, and a
  // re-executed ("threadsafe") child would make a directory of its own in SetUp.
  GTEST_FLAG_SET(death_test_style, "fast");
  const std::string path = write_shard("a.ckpt", 1, 7);
  const auto before = read_file(path);
  auto crash_mid_save = [&] {
    const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const std::size_t readable = std::size_t{4} << 20;
    void* mem = ::mmap(nullptr, readable + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) std::abort();
    std::memset(mem, 0x5a, readable);
    ::mprotect(static_cast<char*>(mem) + readable, page, PROT_NONE);
    std::vector<CheckpointBlob> huge = {{"params", {static_cast<const std::byte*>(mem), readable + page}}};
    blobs_ = huge;
    write_shard("a.ckpt", 1, 8);
  };
  EXPECT_DEATH(crash_mid_save(), "");
  EXPECT_EQ(read_file(path), before);
  EXPECT_EQ(read_checkpoint_shard(path, {1, 4, "dgc"}).step, 7);
  std::size_t temp_bytes = 0;
  for (const auto& entry : fs::directory_iterator(dir_)) {
    if (entry.path().string().find("a.ckpt.tmp.") != std::string::npos) temp_bytes = fs::file_size(entry.path());
  }
  EXPECT_GE(temp_bytes, std::size_t{4} << 20) << "the crash should come after the first 4 MiB were written";
}

}  // namespace
}  // namespace gradcomm
