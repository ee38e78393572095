// Checkpoints: one shard per rank, each with a versioned, checksummed header, written
// atomically (temp file + fsync + rename) so that a crash while saving leaves the previous
// checkpoint intact.
//
// A shard holds this rank's compressor state (Compressor::save_state) and any number of
// named user blobs (parameters, optimizer state), all per rank: error-feedback residuals
// differ between ranks, so saving rank 0's state for everyone loses information (the
// 1-bit Adam reference did exactly that, docs/algorithms/onebit-adam.md).
//
// Shard file format (version 1, all integers little-endian), see docs/reliability.md:
//   offset  size  field
//        0     8  magic "GRADCKPT"
//        8     4  format version
//       12     4  header length H (bytes, from offset 0 up to and including the header CRC)
//       16     4  rank
//       20     4  world size
//       24     8  step (int64)
//       32     8  save id: the same random value in every shard of one save
//       40     8  payload length
//       48     4  payload CRC32C
//       52     4  section count
//       56     4  compressor name length L
//       60     L  compressor name (Compressor::name())
//     60+L     4  header CRC32C over bytes [0, 60+L)
//        H   ...  payload: sections, each [u32 name length][name][u64 size][size bytes];
//                 section 0 is the compressor state, named "gradcomm.compressor"; the
//                 Exchanger overload of save_checkpoint adds "gradcomm.exchange" (its plan
//                 and sparse allreduce regions, Exchanger::save_exchange_state).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace gradcomm {

class Communicator;
class Compressor;
class Exchanger;

inline constexpr std::uint32_t kCheckpointFormatVersion = 1;

// A named blob saved next to the compressor state. The bytes are read during the save only.
struct CheckpointBlob {
  std::string name;
  std::span<const std::byte> data;
};

// CRC32C (Castagnoli), the checksum of shard headers and payloads. `crc` continues a
// running checksum: crc32c(b, crc32c(a)) == crc32c(a + b).
std::uint32_t crc32c(std::span<const std::byte> bytes, std::uint32_t crc = 0) noexcept;

// Where `rank`'s shard of the checkpoint `prefix` lives: "<prefix>.rank<r>.ckpt".
std::string checkpoint_shard_path(const std::string& prefix, int rank);

// What a shard must match to be accepted: anything else is rejected with a
// gradcomm::Error (kCorruptPayload) whose message names the file and the mismatch.
struct ShardExpectation {
  int rank = 0;
  int world_size = 1;
  std::string compressor;  // Compressor::name()
};

// One shard as read back: the header fields and the sections, which view `bytes`.
class CheckpointShard {
 public:
  struct Section {
    std::string name;
    std::size_t offset = 0;  // into bytes()
    std::size_t size = 0;
  };

  std::uint32_t format_version = 0;
  int rank = 0;
  int world_size = 0;
  std::int64_t step = 0;
  std::uint64_t save_id = 0;
  std::string compressor;

  std::span<const std::byte> compressor_state() const;
  bool has(std::string_view name) const;
  // The blob saved under `name`; throws gradcomm::Error (kInvalidArgument) naming the
  // blobs that exist when there is none.
  std::span<const std::byte> blob(std::string_view name) const;
  const std::vector<Section>& sections() const noexcept { return sections_; }

  // Validates `bytes` (a whole shard file) against `expect`, in this order: size of the
  // fixed header, magic, format version, header checksum, rank, world size, compressor,
  // payload length (a truncated file), payload checksum, section table. `source` (a path)
  // goes into the messages.
  static CheckpointShard parse(std::vector<std::byte> bytes, const ShardExpectation& expect,
                               const std::string& source);

 private:
  std::vector<std::byte> bytes_;
  std::vector<Section> sections_;
};

// What one rank writes into its shard.
struct ShardContents {
  int rank = 0;
  int world_size = 1;
  std::int64_t step = 0;
  std::uint64_t save_id = 0;
  std::string compressor;
  std::span<const std::byte> compressor_state;
  std::span<const CheckpointBlob> blobs;
};

// Writes one shard to `path` atomically: "<path>.tmp.<pid>", fsync, rename over `path`,
// fsync of the directory. On failure the temp file is removed, `path` is left as it was,
// and gradcomm::Error (kIo) says which call failed on which file and why.
void write_checkpoint_shard(const std::string& path, const ShardContents& contents);

// The same shard as bytes in memory, for callers that store it themselves (the PyTorch
// hooks' state_dict); CheckpointShard::parse reads it back with every check.
std::vector<std::byte> checkpoint_shard_bytes(const ShardContents& contents);

// Reads and validates one shard (see CheckpointShard::parse). A missing or unreadable
// file is an Error (kIo) naming the path and errno's text.
CheckpointShard read_checkpoint_shard(const std::string& path, const ShardExpectation& expect);

// Collective (every rank of `comm` calls it): each rank writes its shard of `prefix`,
// then all ranks agree that every shard was written; a failure on any rank throws
// gradcomm::Error on every rank, naming the ranks that failed. `step` is stored in the
// header (the Exchanger overload stores Exchanger::step()).
void save_checkpoint(const std::string& prefix, Communicator& comm, const Compressor& compressor,
                     std::int64_t step, std::span<const CheckpointBlob> blobs = {});
void save_checkpoint(const std::string& prefix, Communicator& comm, const Exchanger& exchanger,
                     std::span<const CheckpointBlob> blobs = {});

// Collective: each rank reads and validates its shard, then all ranks check that every
// shard was accepted and that all come from the same save (same save id and step: a
// crash between two ranks' renames leaves shards of two saves). Only then is the
// compressor state loaded; if loading fails on any rank, every rank puts its previous
// compressor state back and throws. The Exchanger overload also restores its step. The
// returned shard gives access to the user blobs.
CheckpointShard load_checkpoint(const std::string& prefix, Communicator& comm, Compressor& compressor);
CheckpointShard load_checkpoint(const std::string& prefix, Communicator& comm, Exchanger& exchanger);

}  // namespace gradcomm
