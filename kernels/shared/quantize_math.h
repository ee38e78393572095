// The per-element arithmetic of bucketed max-min quantization, shared by the CPU and CUDA
// kernels, so both produce bitwise the same payload, residual and decoded sum
// (docs/algorithms/lgreco.md, "The k-bit quantizer"). Every floating-point step is one
// rounded operation of kernels/shared/float_ops.h.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/host_device.h"
#include "kernels/shared/bytes.h"
#include "kernels/shared/float_ops.h"
#include "kernels/shared/splitmix64.h"

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
  lo = fadd(lo, 0.0f);
  hi = fadd(hi, 0.0f);
  if (!(hi > lo)) return {lo, 0.0f, 0.0f};  // constant bucket: min is exact
  const float unit =
      static_cast<float>((static_cast<double>(hi) - static_cast<double>(lo)) / levels);
  const float top = fadd(lo, fmul(static_cast<float>(levels), unit));
  if (!(unit >= kFloatMin) || !is_finite(unit) || !is_finite(top)) return {0.0f, 0.0f, 0.0f};
  return {lo, unit, 1.0f / unit};
}

// Metadata a decoder accepts: finite, unit >= 0, and a finite top level (so every level in
// between is finite too).
GRADCOMM_HOST_DEVICE_INLINE bool meta_valid(float min, float unit, int bits) {
  const int levels = (1 << bits) - 1;
  return is_finite(min) && is_finite(unit) && unit >= 0.0f &&
         is_finite(fadd(min, fmul(static_cast<float>(levels), unit)));
}

// Code i of a packed code stream (element i in bits [i*bits, (i+1)*bits), little-endian);
// reads only the bytes that hold it.
GRADCOMM_HOST_DEVICE_INLINE int code_at(const std::uint8_t* codes, std::size_t i, int bits) {
  const std::size_t bit = i * static_cast<std::size_t>(bits);
  const std::size_t byte = bit / 8;
  const unsigned shift = static_cast<unsigned>(bit % 8);
  unsigned word = codes[byte];
  if (shift + static_cast<unsigned>(bits) > 8) word |= static_cast<unsigned>(codes[byte + 1]) << 8;
  return static_cast<int>((word >> shift) & ((1u << bits) - 1u));
}

// What a decoder checks in one rank's payload, in this order; the CPU reports the first
// fault of the first bad rank, the CUDA validation the same (the lowest rank, then the
// lowest fault: see payload_fault_code).
enum PayloadFault : std::uint32_t {
  kFaultNone = 0,
  kFaultHeader = 1,        // magic, version or bit width differ from the layer's setting
  kFaultCount = 2,         // the element count differs from the layer
  kFaultMeta = 3,          // a bucket's (min, unit) fails meta_valid
  kFaultPaddingCodes = 4,  // codes after the last element are not zero
  kFaultPaddingBytes = 5,  // bytes after the codes are not zero
};

GRADCOMM_HOST_DEVICE_INLINE PayloadFault header_fault(const std::uint8_t* payload, std::size_t n, int bits) {
  if (load_u32(payload) != header_word(bits)) return kFaultHeader;
  if (load_u32(payload + 4) != static_cast<std::uint32_t>(n)) return kFaultCount;
  return kFaultNone;
}

GRADCOMM_HOST_DEVICE_INLINE bool bucket_meta_valid(const std::uint8_t* payload, std::size_t b, int bits) {
  const std::uint8_t* pair = payload + meta_offset() + 8 * b;
  return meta_valid(load_f32(pair), load_f32(pair + 4), bits);
}

// The zero codes completing the last group and the zero bytes up to the 8-byte end.
GRADCOMM_HOST_DEVICE_INLINE PayloadFault padding_fault(const std::uint8_t* payload, std::size_t n, int bits,
                                                       std::size_t bucket) {
  const std::uint8_t* codes = payload + codes_offset(n, bucket);
  const std::size_t used = (n + 7) / 8 * static_cast<std::size_t>(bits);
  if (const std::size_t tail = n % 8; tail != 0) {
    for (std::size_t i = n; i < (n + 7) / 8 * 8; ++i) {
      if (code_at(codes, i, bits) != 0) return kFaultPaddingCodes;
    }
  }
  for (std::size_t i = used; i < code_bytes(n, bits); ++i) {
    if (codes[i] != 0) return kFaultPaddingBytes;
  }
  return kFaultNone;
}

// Rank and fault in one word, so the smallest is the first bad rank's first fault.
GRADCOMM_HOST_DEVICE_INLINE std::uint32_t payload_fault_code(std::uint32_t rank, PayloadFault fault) {
  return rank * 8u + static_cast<std::uint32_t>(fault);
}

inline const char* payload_fault_text(PayloadFault fault) {
  switch (fault) {
    case kFaultHeader: return "header (magic, version or bit width) does not match this layer's setting";
    case kFaultCount: return "header element count does not match the layer";
    case kFaultMeta: return "bucket metadata (min, unit) is not finite, or unit < 0, or the top level overflows";
    case kFaultPaddingCodes: return "padding codes after the last element are not zero";
    case kFaultPaddingBytes: return "padding bytes after the codes are not zero";
    case kFaultNone: break;
  }
  return "no fault";
}

// Counter-based randomness for stochastic rounding: a pure function of (key, index), so the
// result never depends on threads or on the device. The key folds in (seed, rank, layer,
// step, bucket) with splitmix64; per element a murmur3 finalizer of a Weyl sequence,
// 32-bit only so SSE2 and GPUs run it at full width.
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
  return static_cast<int>(fadd(fmul(fsub(x, m.min), m.inv_unit), r));
}
GRADCOMM_HOST_DEVICE_INLINE int encode_value(float x, const BucketMeta& m, float r, int levels) {
  const int q = encode_unclamped(x, m, r);
  return q < levels ? q : levels;
}

GRADCOMM_HOST_DEVICE_INLINE float decode_value(int q, float min, float unit) {
  return fadd(min, fmul(static_cast<float>(q), unit));
}

// What one element contributes to the encoder: the gradient (a non-finite one as 0) plus
// the error fed back (0 without error feedback: -0 + 0 = +0, as everywhere).
GRADCOMM_HOST_DEVICE_INLINE float error_fed(float g, float residual) {
  return fadd(finite_or_zero(g), residual);
}

// What error feedback keeps of x once code q was sent.
GRADCOMM_HOST_DEVICE_INLINE float residual_after(float x, int q, const BucketMeta& m) {
  return fsub(x, decode_value(q, m.min, m.unit));
}

// The squared error one element of a bucket adds to the profile of a bit width (the sum
// over a bucket is in float, in element order on the CPU): nearest rounding exactly what
// the encoder leaves, stochastic its expectation unit^2 * f * (1 - f), f being x's
// fractional position between two levels (the unit^2 factor is applied per bucket).
// A bucket that is constant or not sent (unit 0) errs by the distance to min.
GRADCOMM_HOST_DEVICE_INLINE float squared_error_unsent(float x, const BucketMeta& m) {
  const float d = fsub(x, m.min);
  return fmul(d, d);
}
GRADCOMM_HOST_DEVICE_INLINE float squared_error_nearest(float x, const BucketMeta& m, int levels) {
  const float d = fsub(x, decode_value(encode_value(x, m, 0.5f, levels), m.min, m.unit));
  return fmul(d, d);
}
GRADCOMM_HOST_DEVICE_INLINE float stochastic_variance_term(float x, const BucketMeta& m) {
  const float t = fmul(fsub(x, m.min), m.inv_unit);
  const float f = fsub(t, static_cast<float>(static_cast<int>(t)));
  return fmul(f, fsub(1.0f, f));
}

}  // namespace gradcomm::kernels::quant
