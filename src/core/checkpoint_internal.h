// Internals of the checkpoint code that tests reach directly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace gradcomm::detail {

// The table-driven CRC32C, which gradcomm::crc32c uses where the CPU lacks SSE4.2; exposed
// so tests check it against the hardware path on machines that have both.
std::uint32_t crc32c_portable(std::span<const std::byte> bytes, std::uint32_t crc = 0) noexcept;

}  // namespace gradcomm::detail
