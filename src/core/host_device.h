// Marks a function that both host code and CUDA kernels call: one definition of a
// numeric rule (a rounding, a format) instead of a CPU copy and a GPU copy that can drift.
#pragma once

#if defined(__CUDACC__)
#define GRADCOMM_HOST_DEVICE __host__ __device__
// For the small per-element steps of a kernel's inner loop, which nvcc must not leave as
// calls.
#define GRADCOMM_HOST_DEVICE_INLINE __host__ __device__ __forceinline__
#else
#define GRADCOMM_HOST_DEVICE
#define GRADCOMM_HOST_DEVICE_INLINE inline
#endif

#include <bit>
#include <cstdint>

namespace gradcomm {

// A float's bits and back, on both sides: std::bit_cast is a host constexpr function that
// device code may call only under nvcc's --expt-relaxed-constexpr; the device has
// intrinsics for it.
GRADCOMM_HOST_DEVICE_INLINE std::uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  return std::bit_cast<std::uint32_t>(x);
#endif
}

GRADCOMM_HOST_DEVICE_INLINE float bits_float(std::uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  return std::bit_cast<float>(bits);
#endif
}

}  // namespace gradcomm
