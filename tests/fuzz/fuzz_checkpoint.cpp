// libFuzzer target: the checkpoint shard parser. Mode bit 0 recomputes both CRCs first, so
// inputs get past the checksums to the header fields and the section table; bit 1 expects
// whatever rank, world size and compressor the header names, so those checks pass too.
#include <string>

#include "fuzz/fuzz_util.h"
#include "core/checkpoint_internal.h"
#include "gradcomm/checkpoint.h"

namespace {

std::uint32_t get_u32(const std::vector<std::byte>& b, std::size_t at) { return gradcomm::detail::get_le32(&b[at]); }
void put_u32(std::vector<std::byte>& b, std::size_t at, std::uint32_t v) { gradcomm::detail::put_le32(&b[at], v); }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace gradcomm;
  fuzz::Input in(data, size);
  const std::uint8_t mode = in.u8();
  const auto rest = in.rest();
  std::vector<std::byte> bytes(rest.size());
  if (!rest.empty()) std::memcpy(bytes.data(), rest.data(), rest.size());
  ShardExpectation expect{0, 1, "none"};
  if (bytes.size() >= 64) {
    const std::size_t name_length = get_u32(bytes, 56);
    const std::size_t header_length = 64 + name_length;
    if (name_length <= 4096 && header_length <= bytes.size()) {
      if (mode & 1) {
        put_u32(bytes, 48, crc32c(std::span<const std::byte>(bytes).subspan(header_length)));
        put_u32(bytes, header_length - 4, crc32c(std::span<const std::byte>(bytes.data(), header_length - 4)));
      }
      if (mode & 2) {
        expect.rank = static_cast<int>(get_u32(bytes, 16));
        expect.world_size = static_cast<int>(get_u32(bytes, 20));
        expect.compressor.assign(reinterpret_cast<const char*>(bytes.data() + 60), name_length);
      }
    }
  }
  fuzz::expect_clean([&] {
    const CheckpointShard shard = CheckpointShard::parse(std::move(bytes), expect, "fuzz input");
    // Touch every byte of every section, so ASan checks the bounds the parser reported.
    volatile unsigned sink = 0;
    for (const auto& section : shard.sections()) {
      for (std::byte b : shard.blob(section.name)) sink = sink + std::to_integer<unsigned>(b);
    }
  });
  return 0;
}
