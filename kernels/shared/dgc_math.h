// The per-element arithmetic of Deep Gradient Compression, shared by the CPU kernels
// (kernels/cpu/dgc_kernels.cpp) and the CUDA kernels (kernels/cuda/dgc_kernels.cu), so u,
// v, the candidate keys, the packed values and the decoded update are the same bits on
// both devices. Every floating-point step is one rounded operation (float_ops.h).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "core/float16.h"
#include "core/host_device.h"
#include "kernels/shared/bytes.h"
#include "kernels/shared/float_ops.h"

namespace gradcomm::kernels::dgc {

// Momentum correction (paper Eq. 7) of one element, a non-finite gradient counted as 0:
//   plain:    u = m*u + s*g ;    v = v + u
//   Nesterov: u = m*(u + s*g) ;  v = v + u + s*g
// Returns whether g was finite. kScaled: s is the local clipping factor (else s = 1).
template <bool kNesterov, bool kScaled>
GRADCOMM_HOST_DEVICE_INLINE bool accumulate(float g, float& u, float& v, float m, float s) {
  const bool ok = is_finite(g);
  float x = kScaled ? fmul(g, s) : g;
  x = ok ? x : 0.0f;
  if constexpr (kNesterov) {
    const float un = fmul(m, fadd(u, x));
    u = un;
    v = fadd(fadd(v, un), x);
  } else {
    const float un = fadd(fmul(m, u), x);
    u = un;
    v = fadd(v, un);
  }
  return ok;
}

// Momentum after a dense average, in the same u as the sparse path:
//   plain:    u = m*u + avg ;      avg := u
//   Nesterov: u = m*(u + avg) ;    avg := u + avg
template <bool kNesterov>
GRADCOMM_HOST_DEVICE_INLINE void dense_momentum(float& avg, float& u, float m) {
  if constexpr (kNesterov) {
    const float un = fmul(m, fadd(u, avg));
    u = un;
    avg = fadd(un, avg);
  } else {
    const float un = fadd(fmul(m, u), avg);
    u = un;
    avg = un;
  }
}

// A candidate: (bits of |v[i]|) << 32 | (0xffffffff - i). A larger key is a larger
// magnitude, and among equal magnitudes the lower index: the exact top-k's tie rule. The
// index part also makes every key unique.
GRADCOMM_HOST_DEVICE_INLINE std::uint64_t candidate_key(std::uint32_t magnitude_bits,
                                                         std::uint32_t index) {
  return (static_cast<std::uint64_t>(magnitude_bits) << 32) | (0xffffffffu - index);
}
GRADCOMM_HOST_DEVICE_INLINE std::uint32_t key_index(std::uint64_t key) {
  return 0xffffffffu - static_cast<std::uint32_t>(key);
}

// The sparse payload of one rank (docs/algorithms/dgc.md, "Wire format"):
//   uint32 count | uint32 index[k] | value[k] (fp32 or fp16) | zero padding to 8 bytes
// Slots [0, count) hold strictly increasing indices < n; slots [count, k) hold kSentinel
// with value 0. Read byte by byte (bytes.h): a received payload may sit at any offset.
inline constexpr std::uint32_t kSentinel = 0xffffffffu;
inline constexpr std::size_t kPayloadHeaderBytes = 4;

GRADCOMM_HOST_DEVICE_INLINE std::size_t payload_bytes(std::size_t k, bool half_values) {
  return (kPayloadHeaderBytes + k * (4 + (half_values ? 2 : 4)) + 7) / 8 * 8;
}
GRADCOMM_HOST_DEVICE_INLINE std::size_t values_offset(std::size_t k) {
  return kPayloadHeaderBytes + 4 * k;
}
GRADCOMM_HOST_DEVICE_INLINE std::uint32_t payload_count(const std::uint8_t* block) {
  return load_u32(block);
}
GRADCOMM_HOST_DEVICE_INLINE std::uint32_t payload_index(const std::uint8_t* block, std::size_t j) {
  return load_u32(block + kPayloadHeaderBytes + 4 * j);
}
GRADCOMM_HOST_DEVICE_INLINE float payload_value(const std::uint8_t* block, std::size_t k,
                                                std::size_t j, bool half_values) {
  const std::uint8_t* values = block + values_offset(k);
  return half_values ? half_to_float(load_u16(values + 2 * j)) : load_f32(values + 4 * j);
}

// Whether slot j of a block that claims `count` entries (count <= k, checked first) is
// well formed for a layer of n elements: an index above the previous one and below n, or
// the sentinel past count.
GRADCOMM_HOST_DEVICE_INLINE bool slot_valid(const std::uint8_t* block, std::size_t j,
                                            std::uint32_t count, std::size_t n) {
  const std::uint32_t i = payload_index(block, j);
  if (j >= count) return i == kSentinel;
  return i < n && (j == 0 || i > payload_index(block, j - 1));
}

// Sending v[i]: the value that goes on the wire, and what stays in v. fp32 sends all of v
// (v = 0); fp16 clamps to the finite half range and keeps the rounding (and any excess) in
// v, so error feedback loses nothing.
GRADCOMM_HOST_DEVICE_INLINE float take_f32(float& v) {
  const float x = v;
  v = 0.0f;
  return x;
}
GRADCOMM_HOST_DEVICE_INLINE std::uint16_t take_f16(float& v) {
  constexpr float kHalfMax = 65504.0f;
  const float clamped = v < -kHalfMax ? -kHalfMax : (kHalfMax < v ? kHalfMax : v);
  const std::uint16_t h = float_to_half(clamped);
  v = fsub(v, half_to_float(h));
  return h;
}

// A dense payload element: the input scaled (clipping; 1 otherwise), 0 when not finite.
GRADCOMM_HOST_DEVICE_INLINE float scaled_or_zero(float x, float s) {
  return is_finite(x) ? fmul(x, s) : 0.0f;
}

// Local clipping (paper Eq. 8): the factor that brings a gradient whose finite elements'
// squares sum to `sumsq` to an L2 norm of at most `limit` (1 when it is within it).
GRADCOMM_HOST_DEVICE_INLINE float clip_factor(double sumsq, double limit) {
#if defined(__CUDA_ARCH__)
  const double norm = ::sqrt(sumsq);
#else
  const double norm = std::sqrt(sumsq);
#endif
  return norm > limit ? static_cast<float>(limit / norm) : 1.0f;
}

// What L-GreCo profiles for the DGC family: v after momentum correction, as encode would
// compute it (g already finite and scaled), without touching u or v.
template <bool kNesterov>
GRADCOMM_HOST_DEVICE_INLINE float corrected_velocity(float g, float u, float v, float m) {
  if constexpr (kNesterov) return fadd(fadd(v, fmul(m, fadd(u, g))), g);
  return fadd(v, fadd(fmul(m, u), g));
}

// One received value's share of the average: the decode adds these for each index in
// rank order, starting from +0.
GRADCOMM_HOST_DEVICE_INLINE float average_term(float value, float inv_ranks) {
  return fmul(value, inv_ranks);
}

}  // namespace gradcomm::kernels::dgc
