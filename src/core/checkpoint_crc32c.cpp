// CRC32C (Castagnoli, reflected polynomial 0x82F63B78), as in iSCSI, ext4 and RocksDB.
// Chosen over FNV for checkpoints because x86-64 computes it in hardware (SSE4.2 crc32
// instruction, ~8 bytes per cycle), so checksumming a multi-GB shard costs about as much
// as reading it; the table-driven path (slicing-by-8) serves other CPUs.
#include <array>
#include <cstring>

#include "core/checkpoint_internal.h"
#include "gradcomm/checkpoint.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define GRADCOMM_CRC32C_X86 1
#endif

namespace gradcomm {
namespace {

constexpr std::uint32_t kPolynomial = 0x82F63B78u;

struct Tables {
  std::array<std::array<std::uint32_t, 256>, 8> t{};
  constexpr Tables() {
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ ((c & 1u) ? kPolynomial : 0u);
      t[0][i] = c;
    }
    for (std::uint32_t i = 0; i < 256; ++i) {
      for (std::size_t s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xffu];
    }
  }
};
constexpr Tables kTables{};

std::uint32_t crc32c_software(const unsigned char* p, std::size_t n, std::uint32_t crc) {
  const auto& t = kTables.t;
  while (n >= 8) {
    std::uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 4, 4);
    lo ^= crc;
    crc = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^
          t[3][hi & 0xff] ^ t[2][(hi >> 8) & 0xff] ^ t[1][(hi >> 16) & 0xff] ^ t[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n--) crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xffu];
  return crc;
}

#if defined(GRADCOMM_CRC32C_X86)
__attribute__((target("sse4.2"))) std::uint32_t crc32c_hardware(const unsigned char* p, std::size_t n,
                                                                 std::uint32_t crc) {
  std::uint64_t c = crc;
  while (n >= 8) {
    std::uint64_t word;
    std::memcpy(&word, p, 8);
    c = _mm_crc32_u64(c, word);
    p += 8;
    n -= 8;
  }
  auto c32 = static_cast<std::uint32_t>(c);
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}

bool have_sse42() noexcept {
  static const bool have = __builtin_cpu_supports("sse4.2");
  return have;
}
#endif

}  // namespace

namespace detail {
std::uint32_t crc32c_portable(std::span<const std::byte> bytes, std::uint32_t crc) noexcept {
  return ~crc32c_software(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), ~crc);
}
}  // namespace detail

std::uint32_t crc32c(std::span<const std::byte> bytes, std::uint32_t crc) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  crc = ~crc;
#if defined(GRADCOMM_CRC32C_X86)
  if (have_sse42()) return ~crc32c_hardware(p, bytes.size(), crc);
#endif
  return ~crc32c_software(p, bytes.size(), crc);
}

}  // namespace gradcomm
