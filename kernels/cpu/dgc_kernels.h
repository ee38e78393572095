// CPU kernels of Deep Gradient Compression. Plain pointers and counts; no allocation, no
// communication. Magnitudes are compared as the bits of |x| (for non-negative floats the
// unsigned bit pattern orders like the value), which keeps every loop in integer SIMD.
//
// A candidate is one uint64 key: (bits of |v[i]|) << 32 | (0xffffffff - i). A larger key
// is a larger magnitude, and among equal magnitudes the lower index: the order the exact
// top-k uses to break ties.
#pragma once

#include <cstddef>
#include <cstdint>

namespace gradcomm::kernels {

inline constexpr std::uint32_t kDgcSentinel = 0xffffffffu;

inline std::uint32_t dgc_key_index(std::uint64_t key) {
  return 0xffffffffu - static_cast<std::uint32_t>(key);
}

struct DgcAccumulateArgs {
  float momentum = 0.9f;
  bool nesterov = false;
  float grad_scale = 1.0f;  // local clipping factor (1: none)
  // Writes bits(|v[i]|) after the update for i = sample_start + j * sample_stride.
  std::size_t sample_start = 0;
  std::size_t sample_stride = 0;  // 0: no sampling
  std::uint32_t* samples = nullptr;
  // Collects the keys of updated |v| bits >= collect_bits (0: no collection) into keys,
  // while each chunk is still in cache. Past key_capacity it stops and reports overflow.
  std::uint32_t collect_bits = 0;
  std::uint64_t* keys = nullptr;
  std::size_t key_capacity = 0;
};

struct DgcAccumulateResult {
  std::size_t nonfinite = 0;
  std::size_t samples = 0;
  std::size_t candidates = 0;
  bool overflow = false;
};

// The fused pass (paper Eq. 7), non-finite gradient elements counted and treated as 0:
//   plain:    u = m*u + s*g ;    v = v + u
//   Nesterov: u = m*(u + s*g) ;  v = v + u + s*g
// Reads g, u, v and writes u, v once; samples and candidates come from the same pass.
DgcAccumulateResult dgc_accumulate(const float* grad, float* u, float* v, std::size_t n,
                                   const DgcAccumulateArgs& args);

// Number of samples dgc_accumulate writes for these arguments.
std::size_t dgc_sample_count(std::size_t n, std::size_t start, std::size_t stride);

// The c-th largest (1-based) of `samples` (reordered in place), at least 1 so that a zero
// is never a candidate.
std::uint32_t dgc_sample_threshold(std::uint32_t* samples, std::size_t count, std::size_t c);

// Writes the key of every i with bits(|v[i]|) >= threshold_bits into keys (capacity n);
// returns how many.
std::size_t dgc_collect(const float* v, std::size_t n, std::uint32_t threshold_bits,
                        std::uint64_t* keys);

// Writes the indices of the top min(count, k) keys (largest magnitude, then lower index),
// ascending, to `indices`; `keys` must be in ascending index order (as collected), and
// `scratch` has room for count keys. Returns how many.
std::size_t dgc_select_top(const std::uint64_t* keys, std::size_t count, std::size_t k,
                           std::uint64_t* scratch, std::uint32_t* indices);

// Fills the value slots for `indices` from v and takes what was sent out of v: v = 0
// (fp32), or v = v - float(half(v)) with fp16 values, so the rounding stays in the
// residual. With masking, u = 0 at those indices (paper Eq. 9). fp16 values are clamped to
// the finite half range (the excess stays in v as well).
void dgc_pack_f32(const std::uint32_t* indices, std::size_t count, float* v, float* u, bool masking,
                  float* values);
void dgc_pack_f16(const std::uint32_t* indices, std::size_t count, float* v, float* u, bool masking,
                  std::uint16_t* values);

// out = finite(in) ? in * s : 0 (fp32 or fp16 out); returns the non-finite count.
std::size_t dgc_scaled_copy_f32(const float* in, float s, float* out, std::size_t n);
std::size_t dgc_scaled_copy_f16(const float* in, float s, std::uint16_t* out, std::size_t n);

// Sum of squares of the finite elements (for local clipping).
double dgc_sum_squares_finite(const float* in, std::size_t n);

// Momentum after the dense average, in the same u as the sparse path:
//   plain:    u = m*u + avg ;      avg := u
//   Nesterov: u = m*(u + avg) ;    avg := u + avg
void dgc_dense_momentum(float* avg, float* u, std::size_t n, float momentum, bool nesterov);

}  // namespace gradcomm::kernels
