// Internals of the checkpoint code that tests reach directly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace gradcomm::detail {

// Little-endian fields of the shard format, shared with the tests and the fuzz target that
// forge shards.
inline std::uint32_t get_le32(const std::byte* p) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= std::uint32_t{std::to_integer<std::uint8_t>(p[i])} << (8 * i);
  return v;
}
inline void put_le32(std::byte* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<std::byte>(v >> (8 * i));
}

// The table-driven CRC32C, which gradcomm::crc32c uses where the CPU lacks SSE4.2; exposed
// so tests check it against the hardware path on machines that have both.
std::uint32_t crc32c_portable(std::span<const std::byte> bytes, std::uint32_t crc = 0) noexcept;

}  // namespace gradcomm::detail
