// Scalar pieces of bucketed max-min quantization shared by the CPU and CUDA kernels, so
// both produce bitwise the same payload and residual (docs/algorithms/lgreco.md, "The k-bit
// quantizer").
//
// Every floating-point step is written out one operation at a time with explicit
// rounding on CUDA (__fadd_rn, __fmul_rn): nvcc would otherwise contract a*b+c into an
// FMA and the GPU result would drift from the CPU reference by one ulp.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/host_device.h"

namespace gradcomm::kernels::quant {

// Payload of one layer (docs/algorithms/lgreco.md, "The k-bit quantizer"):
//   [header: 8 bytes][per bucket: float min, float unit][codes, padded to 8 bytes]
// header word 0 = kMagic | bits << 8 | kVersion << 16, word 1 = numel mod 2^32.
// Codes are a little-endian bit stream, element i in bits [i*b, (i+1)*b); every group of 8
// elements fills exactly b bytes, so a bucket (a multiple of 8 elements) starts on a byte.
// The last group is completed with zero codes. Buckets are [j*bucket, (j+1)*bucket).
constexpr std::uint32_t kMagic = 0x51;
constexpr std::uint32_t kVersion = 1;
constexpr std::size_t kHeaderBytes = 8;
constexpr int kMinBits = 1;
constexpr int kMaxBits = 8;

GRADCOMM_HOST_DEVICE_INLINE std::size_t num_buckets(std::size_t n, std::size_t bucket) {
  return (n + bucket - 1) / bucket;
}
// Whole groups of 8 (the last one zero-filled), then zero bytes up to a multiple of 8.
GRADCOMM_HOST_DEVICE_INLINE std::size_t code_bytes(std::size_t n, int bits) {
  return ((n + 7) / 8 * static_cast<std::size_t>(bits) + 7) / 8 * 8;
}
GRADCOMM_HOST_DEVICE_INLINE std::size_t meta_offset() { return kHeaderBytes; }
GRADCOMM_HOST_DEVICE_INLINE std::size_t codes_offset(std::size_t n, std::size_t bucket) {
  return kHeaderBytes + 8 * num_buckets(n, bucket);
}
GRADCOMM_HOST_DEVICE_INLINE std::size_t payload_bytes(std::size_t n, int bits, std::size_t bucket) {
  return codes_offset(n, bucket) + code_bytes(n, bits);
}
GRADCOMM_HOST_DEVICE_INLINE std::uint32_t header_word(int bits) {
  return kMagic | (static_cast<std::uint32_t>(bits) << 8) | (kVersion << 16);
}

#if defined(__CUDA_ARCH__)
GRADCOMM_HOST_DEVICE_INLINE float add(float a, float b) { return __fadd_rn(a, b); }
GRADCOMM_HOST_DEVICE_INLINE float sub(float a, float b) { return __fsub_rn(a, b); }
GRADCOMM_HOST_DEVICE_INLINE float mul(float a, float b) { return __fmul_rn(a, b); }
#else
GRADCOMM_HOST_DEVICE_INLINE float add(float a, float b) { return a + b; }
GRADCOMM_HOST_DEVICE_INLINE float sub(float a, float b) { return a - b; }
GRADCOMM_HOST_DEVICE_INLINE float mul(float a, float b) { return a * b; }
#endif

// (x - x) is 0 for finite x and NaN otherwise; branch-free so loops vectorize.
GRADCOMM_HOST_DEVICE_INLINE bool finite(float x) { return sub(x, x) == 0.0f; }

constexpr float kFloatMin = 1.17549435e-38f;  // smallest normal float

// The metadata of one bucket from its range. unit = (max - min) / (2^b - 1), computed in
// double so the division is correctly rounded everywhere. A bucket whose unit would be
// subnormal, or whose top level min + L*unit would overflow, is not sent this step
// (min = unit = 0): all of it stays in the residual, so error feedback loses nothing.
struct BucketMeta {
  float min;
  float unit;
  float inv_unit;  // 0 when unit is 0
};

GRADCOMM_HOST_DEVICE_INLINE BucketMeta bucket_meta(float lo, float hi, int bits) {
  const int levels = (1 << bits) - 1;
  // -0 + 0 = +0: min/max reductions may return either zero; the payload must not differ.
  lo = add(lo, 0.0f);
  hi = add(hi, 0.0f);
  if (!(hi > lo)) return {lo, 0.0f, 0.0f};  // constant bucket: min is exact
  const float unit =
      static_cast<float>((static_cast<double>(hi) - static_cast<double>(lo)) / levels);
  const float top = add(lo, mul(static_cast<float>(levels), unit));
  if (!(unit >= kFloatMin) || !finite(unit) || !finite(top)) return {0.0f, 0.0f, 0.0f};
  return {lo, unit, 1.0f / unit};
}

// Metadata a decoder accepts: finite, unit >= 0, and a finite top level (so every level in
// between is finite too).
GRADCOMM_HOST_DEVICE_INLINE bool meta_valid(float min, float unit, int bits) {
  const int levels = (1 << bits) - 1;
  return finite(min) && finite(unit) && unit >= 0.0f &&
         finite(add(min, mul(static_cast<float>(levels), unit)));
}

// Counter-based randomness for stochastic rounding: a pure function of (key, index), so the
// result never depends on threads or on the device. The key folds in (seed, rank, layer,
// step, bucket) with splitmix64; per element a murmur3 finalizer of a Weyl sequence,
// 32-bit only so SSE2 and GPUs run it at full width.
GRADCOMM_HOST_DEVICE_INLINE std::uint64_t splitmix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

GRADCOMM_HOST_DEVICE_INLINE std::uint64_t rng_key(std::uint64_t seed, int rank, std::size_t layer,
                                  std::int64_t step) {
  std::uint64_t k = splitmix64(seed);
  k = splitmix64(k ^ static_cast<std::uint64_t>(static_cast<std::uint32_t>(rank)));
  k = splitmix64(k ^ static_cast<std::uint64_t>(layer));
  return splitmix64(k ^ static_cast<std::uint64_t>(step));
}

// The key of one bucket; elements are then numbered within their bucket, so any bucket
// size works and no counter wraps.
GRADCOMM_HOST_DEVICE_INLINE std::uint64_t bucket_key(std::uint64_t key, std::size_t bucket_index) {
  return splitmix64(key ^ (static_cast<std::uint64_t>(bucket_index) * 0xd6e8feb86659fd93ull));
}

// Uniform in [0, 1) with 24 random bits.
GRADCOMM_HOST_DEVICE_INLINE float uniform(std::uint64_t bucket_key, std::uint32_t index_in_bucket) {
  std::uint32_t h = index_in_bucket * 0x9e3779b1u + static_cast<std::uint32_t>(bucket_key);
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  h ^= static_cast<std::uint32_t>(bucket_key >> 32);
  return static_cast<float>(h >> 8) * 5.9604644775390625e-8f;  // 2^-24
}

// The code of x: floor((x - min) / unit + r), r = 0.5 (nearest) or uniform (stochastic),
// clamped to the levels. x >= min, so truncation is floor.
GRADCOMM_HOST_DEVICE_INLINE int encode_unclamped(float x, const BucketMeta& m, float r) {
  return static_cast<int>(add(mul(sub(x, m.min), m.inv_unit), r));
}
GRADCOMM_HOST_DEVICE_INLINE int encode_value(float x, const BucketMeta& m, float r, int levels) {
  const int q = encode_unclamped(x, m, r);
  return q < levels ? q : levels;
}

GRADCOMM_HOST_DEVICE_INLINE float decode_value(int q, float min, float unit) {
  return add(min, mul(static_cast<float>(q), unit));
}

}  // namespace gradcomm::kernels::quant
