// The 16-bit float formats gradcomm sends and reduces, converted to and from float32 in
// one place for the CPU kernels, the compressors, the communicators and (through
// GRADCOMM_HOST_DEVICE) CUDA kernels. Plain integer arithmetic, without compiler
// extensions (_Float16 and __bf16 support differs between GCC and clang versions).
#pragma once

#include <cstdint>

#include "core/host_device.h"

namespace gradcomm {

// IEEE binary16. Round to nearest even, overflow to Inf, NaN stays NaN: the same as
// CUDA's __float2half.
GRADCOMM_HOST_DEVICE inline std::uint16_t float_to_half(float value) {
  const std::uint32_t bits = float_bits(value);
  const std::uint32_t sign = (bits >> 16) & 0x8000u;
  std::uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude >= 0x7f800000u) {  // Inf or NaN
    return static_cast<std::uint16_t>(sign | 0x7c00u | (magnitude > 0x7f800000u ? 0x200u : 0u));
  }
  if (magnitude >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // overflow
  if (magnitude < 0x38800000u) {  // subnormal half (or zero)
    // Add 0.5 (as float), which aligns the mantissa so the FPU does the rounding.
    const float shifted = bits_float(magnitude) + 0.5f;
    return static_cast<std::uint16_t>(sign | (float_bits(shifted) - 0x3f000000u));
  }
  const std::uint32_t odd = (magnitude >> 13) & 1u;
  magnitude += 0xc8000fffu + odd;  // rebias exponent (-112 << 23) and round half to even
  return static_cast<std::uint16_t>(sign | (magnitude >> 13));
}

GRADCOMM_HOST_DEVICE inline float half_to_float(std::uint16_t half) {
  const std::uint32_t sign = static_cast<std::uint32_t>(half & 0x8000u) << 16;
  const std::uint32_t exponent = (half >> 10) & 0x1fu;
  const std::uint32_t mantissa = half & 0x3ffu;
  if (exponent == 0x1f) return bits_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    // subnormal or zero: mantissa * 2^-24
    const float value = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -value : value;
  }
  return bits_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

// bfloat16 is the top half of a float32. Round to nearest even; NaN stays a (quiet) NaN
// instead of rounding into Inf.
GRADCOMM_HOST_DEVICE inline float bfloat16_to_float(std::uint16_t value) {
  return bits_float(std::uint32_t{value} << 16);
}

GRADCOMM_HOST_DEVICE inline std::uint16_t float_to_bfloat16(float value) {
  std::uint32_t bits = float_bits(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>(bits >> 16);
}

}  // namespace gradcomm
