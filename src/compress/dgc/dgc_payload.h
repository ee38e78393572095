// The sparse payload's layout, shared by the files that write, size and read it: a uint32
// count, k uint32 index slots, then k values (fp16 or fp32): docs/algorithms/dgc.md, "Wire format".
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/float16.h"

namespace gradcomm::detail {

constexpr std::size_t kHeaderBytes = 4;  // uint32 count

inline std::uint32_t load_u32(const std::byte* p) {
  std::uint32_t x;
  std::memcpy(&x, p, sizeof x);
  return x;
}

// Value j of a sparse payload's value array (fp16 or fp32 on the wire).
inline float load_value(const std::byte* values, std::size_t j, bool half) {
  if (half) {
    std::uint16_t h;
    std::memcpy(&h, values + sizeof h * j, sizeof h);
    return half_to_float(h);
  }
  float x;
  std::memcpy(&x, values + sizeof x * j, sizeof x);
  return x;
}

}  // namespace gradcomm::detail
