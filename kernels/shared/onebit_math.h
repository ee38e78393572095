// The per-element arithmetic and the wire layout of the 1-bit compressed allreduce
// (docs/algorithms/onebit-adam.md), shared by the CPU kernels (kernels/cpu/onebit_kernels.cpp)
// and the CUDA kernels (kernels/cuda/onebit_kernels.cu): given the same scale, signs and
// errors are the same bits on both. Packed signs are LSB first: bit k of byte b is element
// 8b + k; a set bit means +scale (the value was >= 0), a clear bit -scale.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "core/host_device.h"
#include "kernels/shared/float_ops.h"

namespace gradcomm::kernels::onebit {

// n rounded up to a multiple of 8 * ranks: every rank's chunk is whole bytes of signs.
GRADCOMM_HOST_DEVICE_INLINE std::size_t padded_numel(std::size_t n, int ranks) {
  const std::size_t multiple = 8 * static_cast<std::size_t>(ranks);
  return (n + multiple - 1) / multiple * multiple;
}

// One tensor's segment in a per-rank block: [fp32 scale][chunk / 8 bytes of signs], padded
// to 4 bytes so the next segment's scale is an aligned float (0 for an empty tensor).
GRADCOMM_HOST_DEVICE_INLINE std::size_t segment_bytes(std::size_t padded, int ranks) {
  if (padded == 0) return 0;
  return sizeof(float) + (padded / 8 / static_cast<std::size_t>(ranks) + 3) / 4 * 4;
}

// The value a sign stands for: x (non-finite as 0; 0 past the tensor's end) plus the
// error fed back.
GRADCOMM_HOST_DEVICE_INLINE float compensated(float x, float err) { return fadd(finite_or_zero(x), err); }

GRADCOMM_HOST_DEVICE_INLINE bool positive(float v) { return v >= 0.0f; }

GRADCOMM_HOST_DEVICE_INLINE float signed_scale(bool is_positive, float scale) {
  return is_positive ? scale : -scale;
}

// What error feedback keeps once v was sent as its sign times scale.
GRADCOMM_HOST_DEVICE_INLINE float error_after(float v, float scale) {
  return fsub(v, signed_scale(positive(v), scale));
}

// The server's value of one element: the ranks' signed scales summed in rank order
// (sum), averaged, plus the server error.
GRADCOMM_HOST_DEVICE_INLINE float server_value(float sum, float ranks, float err) {
  return fadd(fdiv(sum, ranks), err);
}

// The scale of a tensor: the RMS of its compensated values, sqrt(sumsq / count) as float.
GRADCOMM_HOST_DEVICE_INLINE float scale_of(double sumsq, std::size_t count) {
  if (count == 0) return 0.0f;
#if defined(__CUDA_ARCH__)
  return static_cast<float>(::sqrt(sumsq / static_cast<double>(count)));
#else
  return static_cast<float>(std::sqrt(sumsq / static_cast<double>(count)));
#endif
}

GRADCOMM_HOST_DEVICE_INLINE bool sign_bit(const std::uint8_t* bits, std::size_t i) {
  return ((bits[i / 8] >> (i % 8)) & 1u) != 0;
}

}  // namespace gradcomm::kernels::onebit
