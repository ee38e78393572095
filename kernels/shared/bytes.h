// Little-endian words read byte by byte: a payload may sit at any offset of a received
// buffer, and these read the same on the CPU (which merges them into one load) and on the
// GPU (where a misaligned word load would fault).
#pragma once

#include <cstdint>

#include "core/host_device.h"

namespace gradcomm::kernels {

GRADCOMM_HOST_DEVICE_INLINE std::uint32_t load_u32(const std::uint8_t* p) {
  return static_cast<std::uint32_t>(p[0]) | (static_cast<std::uint32_t>(p[1]) << 8) |
         (static_cast<std::uint32_t>(p[2]) << 16) | (static_cast<std::uint32_t>(p[3]) << 24);
}

GRADCOMM_HOST_DEVICE_INLINE float load_f32(const std::uint8_t* p) {
  return bits_float(load_u32(p));
}

GRADCOMM_HOST_DEVICE_INLINE std::uint16_t load_u16(const std::uint8_t* p) {
  return static_cast<std::uint16_t>(p[0] | (p[1] << 8));
}

}  // namespace gradcomm::kernels
