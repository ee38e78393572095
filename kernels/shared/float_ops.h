// The float operations the CPU and CUDA kernels share, each rounded on its own.
//
// nvcc contracts a*b+c into one FMA unless told otherwise, and the GPU result then
// differs from the CPU's by an ulp; the CPU build (ISO C++, no -ffast-math) never
// contracts. Written with __fadd_rn and friends on the device, every step rounds the same
// way on both, so the shared per-element functions built on these give the same bits.
#pragma once

#include <cstdint>

#include "core/host_device.h"

namespace gradcomm::kernels {

#if defined(__CUDA_ARCH__)
GRADCOMM_HOST_DEVICE_INLINE float fadd(float a, float b) { return __fadd_rn(a, b); }
GRADCOMM_HOST_DEVICE_INLINE float fsub(float a, float b) { return __fsub_rn(a, b); }
GRADCOMM_HOST_DEVICE_INLINE float fmul(float a, float b) { return __fmul_rn(a, b); }
GRADCOMM_HOST_DEVICE_INLINE float fdiv(float a, float b) { return __fdiv_rn(a, b); }
#else
GRADCOMM_HOST_DEVICE_INLINE float fadd(float a, float b) { return a + b; }
GRADCOMM_HOST_DEVICE_INLINE float fsub(float a, float b) { return a - b; }
GRADCOMM_HOST_DEVICE_INLINE float fmul(float a, float b) { return a * b; }
GRADCOMM_HOST_DEVICE_INLINE float fdiv(float a, float b) { return a / b; }
#endif

// (x - x) is 0 for finite x and NaN otherwise: branch-free, so CPU loops vectorize.
GRADCOMM_HOST_DEVICE_INLINE bool is_finite(float x) { return fsub(x, x) == 0.0f; }

// For non-negative floats the bit pattern orders like the value, so magnitudes compare as
// the bits of |x| (integer SIMD on the CPU, plain integer compares on the GPU).
GRADCOMM_HOST_DEVICE_INLINE std::uint32_t abs_bits(float x) {
  return float_bits(x) & 0x7fffffffu;
}

// A non-finite input counts as 0 (the compressors' rule; the caller counts it).
GRADCOMM_HOST_DEVICE_INLINE float finite_or_zero(float x) { return is_finite(x) ? x : 0.0f; }

}  // namespace gradcomm::kernels
