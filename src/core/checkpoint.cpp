// One checkpoint shard: the format (include/gradcomm/checkpoint.h), its validation, and the
// atomic write.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <system_error>

#include "core/checkpoint_internal.h"
#include "gradcomm/checkpoint.h"
#include "gradcomm/error.h"

namespace gradcomm {
namespace {

constexpr char kCheckpointMagic[8] = {'G', 'R', 'A', 'D', 'C', 'K', 'P', 'T'};
constexpr std::size_t kFixedHeader = 60;  // up to and without the compressor name
constexpr std::size_t kMaxName = 4096;     // compressor and section names
constexpr const char* kCompressorSection = "gradcomm.compressor";

// Fixed offsets of the header fields (see the table in checkpoint.h).
enum : std::size_t {
  kOffVersion = 8, kOffHeaderLength = 12, kOffRank = 16, kOffWorld = 20, kOffStep = 24,
  kOffSaveId = 32, kOffPayloadLength = 40, kOffPayloadCrc = 48, kOffSections = 52, kOffNameLength = 56,
};

void put_u32(std::byte* p, std::uint32_t v) { detail::put_le32(p, v); }
void put_u64(std::byte* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::byte>(v >> (8 * i));
}
std::uint32_t get_u32(const std::byte* p) { return detail::get_le32(p); }
std::uint64_t get_u64(const std::byte* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= std::uint64_t{std::to_integer<std::uint8_t>(p[i])} << (8 * i);
  return v;
}

std::span<const std::byte> as_bytes(const std::string& s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

std::string errno_text(int err) { return std::system_category().message(err); }

#define GRADCOMM_CORRUPT(cond, source, ...) \
  GRADCOMM_CHECK(cond, ErrorCode::kCorruptPayload, "checkpoint shard ", source, ": ", __VA_ARGS__)

// A file descriptor closed (and, until committed, its temp file removed) on every exit path.
class TempFile {
 public:
  explicit TempFile(std::string path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    GRADCOMM_CHECK(fd_ >= 0, ErrorCode::kIo, "cannot create checkpoint temp file ", path_, ": ",
                   errno_text(errno));
  }
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(path_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  void write(std::span<const std::byte> bytes) {
    const std::byte* p = bytes.data();
    std::size_t left = bytes.size();
    while (left > 0) {
      const ssize_t n = ::write(fd_, p, std::min<std::size_t>(left, std::size_t{1} << 30));
      if (n < 0 && errno == EINTR) continue;
      GRADCOMM_CHECK(n > 0, ErrorCode::kIo, "writing checkpoint temp file ", path_, " (",
                     left, " bytes left): ", n < 0 ? errno_text(errno) : std::string("wrote nothing"));
      p += n;
      left -= static_cast<std::size_t>(n);
    }
  }
  void write_at(std::size_t offset, std::span<const std::byte> bytes) {
    const ssize_t n = ::pwrite(fd_, bytes.data(), bytes.size(), static_cast<off_t>(offset));
    GRADCOMM_CHECK(n == static_cast<ssize_t>(bytes.size()), ErrorCode::kIo,
                   "writing the header of checkpoint temp file ", path_, ": ",
                   n < 0 ? errno_text(errno) : std::string("short write"));
  }
  // fsync, close, then rename over `target`: the target is either the old file or the
  // complete new one, never a mix.
  void commit(const std::string& target) {
    GRADCOMM_CHECK(::fsync(fd_) == 0, ErrorCode::kIo, "fsync of checkpoint temp file ", path_, ": ",
                   errno_text(errno));
    const int fd = fd_;
    fd_ = -1;
    GRADCOMM_CHECK(::close(fd) == 0, ErrorCode::kIo, "close of checkpoint temp file ", path_, ": ",
                   errno_text(errno));
    GRADCOMM_CHECK(::rename(path_.c_str(), target.c_str()) == 0, ErrorCode::kIo, "rename of ", path_,
                   " to ", target, ": ", errno_text(errno));
    committed_ = true;
  }

 private:
  std::string path_;
  int fd_ = -1;
  bool committed_ = false;
};

// The rename is durable only once the directory entry is: fsync the directory too.
void sync_directory_of(const std::string& path) {
  const auto slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  GRADCOMM_CHECK(fd >= 0, ErrorCode::kIo, "cannot open directory ", dir, " to sync checkpoint ", path,
                 ": ", errno_text(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  GRADCOMM_CHECK(rc == 0, ErrorCode::kIo, "fsync of directory ", dir, " after writing ", path, ": ",
                 errno_text(err));
}

void check_section_name(const std::string& name, const std::string& path) {
  GRADCOMM_CHECK_ARG(!name.empty() && name.size() <= kMaxName, "checkpoint ", path,
                     ": a blob name must have 1 to ", kMaxName, " bytes, got ", name.size());
  GRADCOMM_CHECK_ARG(name != kCompressorSection, "checkpoint ", path, ": the blob name '",
                     kCompressorSection, "' is reserved for the compressor state");
}

}  // namespace

std::string checkpoint_shard_path(const std::string& prefix, int rank) {
  GRADCOMM_CHECK_ARG(!prefix.empty(), "checkpoint path prefix is empty");
  GRADCOMM_CHECK_ARG(rank >= 0, "checkpoint shard of rank ", rank, " < 0");
  return prefix + ".rank" + std::to_string(rank) + ".ckpt";
}

namespace {

// A shard in memory, for callers that keep it themselves (the PyTorch hooks' state_dict).
class MemorySink {
 public:
  void write(std::span<const std::byte> bytes) { bytes_.insert(bytes_.end(), bytes.begin(), bytes.end()); }
  void write_at(std::size_t offset, std::span<const std::byte> bytes) {
    std::copy(bytes.begin(), bytes.end(), bytes_.begin() + static_cast<std::ptrdiff_t>(offset));
  }
  std::vector<std::byte> take() { return std::move(bytes_); }

 private:
  std::vector<std::byte> bytes_;
};

// Writes the shard of `c` into `sink` (a file or memory); `where` names it in errors.
template <typename Sink>
void emit_shard(Sink& sink, const ShardContents& c, const std::string& where) {
  const std::string& path = where;
  GRADCOMM_CHECK_ARG(c.rank >= 0 && c.world_size >= 1 && c.rank < c.world_size, "checkpoint ", path,
                     ": rank ", c.rank, " is not in a world of ", c.world_size);
  GRADCOMM_CHECK_ARG(c.compressor.size() <= kMaxName, "checkpoint ", path, ": compressor name of ",
                     c.compressor.size(), " bytes (at most ", kMaxName, ")");
  for (std::size_t i = 0; i < c.blobs.size(); ++i) {
    check_section_name(c.blobs[i].name, path);
    for (std::size_t j = 0; j < i; ++j) {
      GRADCOMM_CHECK_ARG(c.blobs[j].name != c.blobs[i].name, "checkpoint ", path, ": blob name '",
                         c.blobs[i].name, "' given twice");
    }
  }
  const std::size_t header_length = kFixedHeader + c.compressor.size() + 4;
  std::vector<std::byte> header(header_length);
  sink.write(header);  // a placeholder; the real header goes in once the payload CRC is known

  // Stream each section through the checksum and into the sink in slices, so the payload
  // is read once, and a crash mid-way leaves only a partial temp file behind.
  std::uint32_t crc = 0;
  std::uint64_t payload_length = 0;
  auto emit = [&](std::span<const std::byte> bytes) {
    constexpr std::size_t kSlice = std::size_t{4} << 20;
    for (std::size_t at = 0; at < bytes.size(); at += kSlice) {
      const auto slice = bytes.subspan(at, std::min(kSlice, bytes.size() - at));
      crc = crc32c(slice, crc);
      sink.write(slice);
    }
    payload_length += bytes.size();
  };
  auto emit_section = [&](const std::string& name, std::span<const std::byte> data) {
    std::byte lengths[12];
    put_u32(lengths, static_cast<std::uint32_t>(name.size()));
    emit(std::span<const std::byte>(lengths, 4));
    emit(as_bytes(name));
    put_u64(lengths + 4, data.size());
    emit(std::span<const std::byte>(lengths + 4, 8));
    emit(data);
  };
  emit_section(kCompressorSection, c.compressor_state);
  for (const CheckpointBlob& blob : c.blobs) emit_section(blob.name, blob.data);

  std::memcpy(header.data(), kCheckpointMagic, sizeof kCheckpointMagic);
  put_u32(&header[kOffVersion], kCheckpointFormatVersion);
  put_u32(&header[kOffHeaderLength], static_cast<std::uint32_t>(header_length));
  put_u32(&header[kOffRank], static_cast<std::uint32_t>(c.rank));
  put_u32(&header[kOffWorld], static_cast<std::uint32_t>(c.world_size));
  put_u64(&header[kOffStep], static_cast<std::uint64_t>(c.step));
  put_u64(&header[kOffSaveId], c.save_id);
  put_u64(&header[kOffPayloadLength], payload_length);
  put_u32(&header[kOffPayloadCrc], crc);
  put_u32(&header[kOffSections], static_cast<std::uint32_t>(1 + c.blobs.size()));
  put_u32(&header[kOffNameLength], static_cast<std::uint32_t>(c.compressor.size()));
  std::memcpy(&header[kFixedHeader], c.compressor.data(), c.compressor.size());
  const std::size_t covered = header_length - 4;
  put_u32(&header[covered], crc32c(std::span<const std::byte>(header.data(), covered)));
  sink.write_at(0, header);
}

}  // namespace

void write_checkpoint_shard(const std::string& path, const ShardContents& c) {
  TempFile file(path + ".tmp." + std::to_string(::getpid()));
  emit_shard(file, c, path);
  file.commit(path);
  sync_directory_of(path);
}

std::vector<std::byte> checkpoint_shard_bytes(const ShardContents& contents) {
  MemorySink sink;
  emit_shard(sink, contents, "(in memory)");
  return sink.take();
}

CheckpointShard CheckpointShard::parse(std::vector<std::byte> bytes, const ShardExpectation& expect,
                                       const std::string& source) {
  const std::size_t size = bytes.size();
  const std::byte* p = bytes.data();
  GRADCOMM_CORRUPT(size >= kFixedHeader + 4, source, "truncated: ", size,
                   " bytes, shorter than the smallest shard header (", kFixedHeader + 4, " bytes)");
  GRADCOMM_CORRUPT(std::memcmp(p, kCheckpointMagic, sizeof kCheckpointMagic) == 0, source,
                   "not a gradcomm checkpoint shard (bad magic)");
  const std::uint32_t version = get_u32(p + kOffVersion);
  GRADCOMM_CORRUPT(version == kCheckpointFormatVersion, source, "format version ", version,
                   "; this build reads version ", kCheckpointFormatVersion);
  const std::uint32_t name_length = get_u32(p + kOffNameLength);
  GRADCOMM_CORRUPT(name_length <= kMaxName, source, "corrupt header: compressor name of ", name_length,
                   " bytes");
  const std::size_t header_length = kFixedHeader + name_length + 4;
  GRADCOMM_CORRUPT(size >= header_length, source, "truncated: ", size, " bytes, the header alone needs ",
                   header_length);
  GRADCOMM_CORRUPT(get_u32(p + kOffHeaderLength) == header_length, source,
                   "corrupt header: header length field ", get_u32(p + kOffHeaderLength), ", expected ",
                   header_length);
  const std::uint32_t header_crc = crc32c(std::span<const std::byte>(p, header_length - 4));
  GRADCOMM_CORRUPT(get_u32(p + header_length - 4) == header_crc, source,
                   "header checksum mismatch (stored ", get_u32(p + header_length - 4), ", computed ",
                   header_crc, "): the header is corrupt");

  CheckpointShard shard;
  shard.format_version = version;
  shard.rank = static_cast<int>(get_u32(p + kOffRank));
  shard.world_size = static_cast<int>(get_u32(p + kOffWorld));
  shard.step = static_cast<std::int64_t>(get_u64(p + kOffStep));
  shard.save_id = get_u64(p + kOffSaveId);
  shard.compressor.assign(reinterpret_cast<const char*>(p + kFixedHeader), name_length);
  GRADCOMM_CORRUPT(shard.rank == expect.rank, source, "this is the shard of rank ", shard.rank,
                   ", not of rank ", expect.rank, " (shards were swapped or renamed)");
  GRADCOMM_CORRUPT(shard.world_size == expect.world_size, source, "saved by a world of ",
                   shard.world_size, " ranks; this run has ", expect.world_size);
  GRADCOMM_CORRUPT(shard.compressor == expect.compressor, source, "saved with compressor '",
                   shard.compressor, "'; this run uses '", expect.compressor, "'");

  const std::uint64_t payload_length = get_u64(p + kOffPayloadLength);
  const std::size_t available = size - header_length;
  GRADCOMM_CORRUPT(payload_length <= available, source, "truncated: the header promises ", payload_length,
                   " payload bytes, the file holds ", available);
  GRADCOMM_CORRUPT(payload_length == available, source, available - payload_length,
                   " unexpected bytes after the ", payload_length, "-byte payload");
  const std::span<const std::byte> payload(p + header_length, available);
  const std::uint32_t payload_crc = crc32c(payload);
  GRADCOMM_CORRUPT(get_u32(p + kOffPayloadCrc) == payload_crc, source, "payload checksum mismatch (stored ",
                   get_u32(p + kOffPayloadCrc), ", computed ", payload_crc, "): the payload is corrupt");

  // The checksum matched, so a bad table below means a writer bug or a forged file: still
  // validate every length before using it.
  const std::uint32_t count = get_u32(p + kOffSections);
  GRADCOMM_CORRUPT(count >= 1 && count <= available / 12, source, "section count ", count,
                   " does not fit a payload of ", available, " bytes");
  std::size_t at = header_length;
  shard.sections_.reserve(count);
  for (std::uint32_t i = 0; i < count; ++i) {
    GRADCOMM_CORRUPT(size - at >= 4, source, "section ", i, " header runs past the end");
    const std::uint32_t length = get_u32(p + at);
    GRADCOMM_CORRUPT(length <= kMaxName && size - at - 4 >= std::size_t{length} + 8, source, "section ", i,
                     " name of ", length, " bytes runs past the end");
    Section section;
    section.name.assign(reinterpret_cast<const char*>(p + at + 4), length);
    at += 4 + length;
    const std::uint64_t data_size = get_u64(p + at);
    at += 8;
    GRADCOMM_CORRUPT(data_size <= size - at, source, "section '", section.name, "' of ", data_size,
                     " bytes runs past the end (", size - at, " left)");
    section.offset = at;
    section.size = static_cast<std::size_t>(data_size);
    at += section.size;
    GRADCOMM_CORRUPT(i != 0 || section.name == kCompressorSection, source,
                     "the first section is '", section.name, "', expected '", kCompressorSection, "'");
    GRADCOMM_CORRUPT(!shard.has(section.name), source, "section '", section.name, "' appears twice");
    shard.sections_.push_back(std::move(section));
  }
  GRADCOMM_CORRUPT(at == size, source, size - at, " bytes after the last section");
  shard.bytes_ = std::move(bytes);
  return shard;
}

std::span<const std::byte> CheckpointShard::compressor_state() const {
  return blob(kCompressorSection);
}

bool CheckpointShard::has(std::string_view name) const {
  return std::any_of(sections_.begin(), sections_.end(), [&](const Section& s) { return s.name == name; });
}

std::span<const std::byte> CheckpointShard::blob(std::string_view name) const {
  for (const Section& s : sections_) {
    if (s.name == name) return std::span<const std::byte>(bytes_).subspan(s.offset, s.size);
  }
  std::string names;
  for (const Section& s : sections_) names += (names.empty() ? "'" : ", '") + s.name + "'";
  GRADCOMM_THROW(ErrorCode::kInvalidArgument, "checkpoint shard of rank ", rank, " (step ", step,
                 ") has no blob '", name, "'; it has ", names);
}

CheckpointShard read_checkpoint_shard(const std::string& path, const ShardExpectation& expect) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  GRADCOMM_CHECK(fd >= 0, ErrorCode::kIo, "cannot open checkpoint shard ", path, " on rank ",
                 expect.rank, ": ", errno_text(errno));
  std::vector<std::byte> bytes;
  const off_t end = ::lseek(fd, 0, SEEK_END);
  int err = end < 0 ? errno : 0;
  if (end > 0) bytes.resize(static_cast<std::size_t>(end));
  std::size_t got = 0;
  while (got < bytes.size()) {
    const ssize_t n = ::pread(fd, bytes.data() + got, bytes.size() - got, static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      err = n < 0 ? errno : 0;
      break;
    }
    got += static_cast<std::size_t>(n);
  }
  ::close(fd);
  GRADCOMM_CHECK(err == 0, ErrorCode::kIo, "reading checkpoint shard ", path, " on rank ", expect.rank,
                 ": ", errno_text(err));
  bytes.resize(got);  // a file that shrank while read is caught below as truncated
  return CheckpointShard::parse(std::move(bytes), expect, path);
}

}  // namespace gradcomm
