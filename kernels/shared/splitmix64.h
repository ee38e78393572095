// splitmix64: the counter-based mixer behind gradcomm's reproducible random choices (DGC's
// sample offsets, the quantizer's stochastic rounding). A pure function of its input, so a
// draw never depends on threads or on the device.
#pragma once

#include <cstdint>

#include "core/host_device.h"

namespace gradcomm::kernels {

GRADCOMM_HOST_DEVICE_INLINE std::uint64_t splitmix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace gradcomm::kernels
