// The hot loops of the CPU quantizer, compiled twice: for the x86-64 baseline (SSE2) in
// quantize_kernels.cpp and for AVX2 in quantize_kernels_avx2.cpp, chosen at run time.
// Both compile the same IEEE operations (no FMA), so they give bitwise the same payload.
// Include once each from those two files, with GRADCOMM_QUANT_ISA naming the namespace
// (no include guard: each file compiles it into its own namespace).

#include <algorithm>
#include <cstring>
#include <limits>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "kernels/cpu/quantize_kernels.h"

namespace gradcomm::kernels::GRADCOMM_QUANT_ISA {
namespace {

using quant::BucketMeta;

// Min and max of a bucket. The reduction order does not matter (min/max are exact), but
// without -ffast-math GCC will not vectorize a ternary min, so SSE2 does it by hand.
void min_max(const float* x, std::size_t len, float* lo_out, float* hi_out) {
  float lo = std::numeric_limits<float>::infinity();
  float hi = -std::numeric_limits<float>::infinity();
  std::size_t i = 0;
#if defined(__SSE2__)
  if (len >= 8) {
    __m128 lo0 = _mm_set1_ps(lo), lo1 = lo0, hi0 = _mm_set1_ps(hi), hi1 = hi0;
    for (; i + 8 <= len; i += 8) {
      const __m128 a = _mm_loadu_ps(x + i), b = _mm_loadu_ps(x + i + 4);
      lo0 = _mm_min_ps(lo0, a);
      lo1 = _mm_min_ps(lo1, b);
      hi0 = _mm_max_ps(hi0, a);
      hi1 = _mm_max_ps(hi1, b);
    }
    alignas(16) float l[4], h[4];
    _mm_store_ps(l, _mm_min_ps(lo0, lo1));
    _mm_store_ps(h, _mm_max_ps(hi0, hi1));
    for (int j = 0; j < 4; ++j) {
      lo = std::min(lo, l[j]);
      hi = std::max(hi, h[j]);
    }
  }
#endif
  for (; i < len; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  *lo_out = lo;
  *hi_out = hi;
}

// x = finite(g) ? g : 0 (+ residual). Returns how many g were not finite. A finite g plus
// a finite residual can still overflow to +-Inf: the caller sees that in the bucket's
// min/max and calls zero_overflow (rare, so the hot loop checks once, not twice).
std::size_t load_error_fed(const float* g, const float* residual, float* x, std::size_t len) {
  std::size_t bad = 0;
  for (std::size_t i = 0; i < len; ++i) {
    bad += static_cast<std::size_t>(!is_finite(g[i]));
    x[i] = quant::error_fed(g[i], residual ? residual[i] : 0.0f);
  }
  return bad;
}

std::size_t zero_overflow(float* x, std::size_t len) {
  std::size_t bad = 0;
  for (std::size_t i = 0; i < len; ++i) {
    if (!is_finite(x[i])) {
      x[i] = 0.0f;
      bad += 1;
    }
  }
  return bad;
}

// Eight codes (one per byte of a little-endian word) squeezed into their low 8*B bits by
// three SWAR steps that each merge neighbours: about 1.5 operations per element instead of
// a shift and an or per code.
template <int B>
std::uint64_t squeeze(std::uint64_t w) {
  w = (w & 0x00ff00ff00ff00ffull) | ((w & 0xff00ff00ff00ff00ull) >> (8 - B));
  w = (w & 0x0000ffff0000ffffull) | ((w & 0xffff0000ffff0000ull) >> (16 - 2 * B));
  return (w & 0x00000000ffffffffull) | ((w >> 32) << (4 * B));
}

template <int B>
void pack(const std::uint8_t* q, std::size_t groups, std::uint8_t* out) {
  if constexpr (B == 8) {
    std::memcpy(out, q, groups * 8);
  } else {
    for (std::size_t g = 0; g < groups; ++g) {
      std::uint64_t w;
      std::memcpy(&w, q + 8 * g, 8);
      w = squeeze<B>(w);
      std::memcpy(out + g * B, &w, B);
    }
  }
}

// The inverse of squeeze: the low 8*B bits of w spread back to one code per byte.
template <int B>
std::uint64_t spread(std::uint64_t w) {
  constexpr std::uint64_t kLow4 = (std::uint64_t{1} << (4 * B)) - 1;
  constexpr std::uint64_t kLow2 = ((std::uint64_t{1} << (2 * B)) - 1) * 0x0000000100000001ull;
  constexpr std::uint64_t kLow1 = ((std::uint64_t{1} << B) - 1) * 0x0001000100010001ull;
  w = (w & kLow4) | ((w >> (4 * B)) << 32);
  w = (w & kLow2) | ((w & (kLow2 << (2 * B))) << (16 - 2 * B));
  return (w & kLow1) | ((w & (kLow1 << B)) << (8 - B));
}

template <int B>
void unpack(const std::uint8_t* in, std::size_t groups, std::uint8_t* q) {
  if constexpr (B == 8) {
    std::memcpy(q, in, groups * 8);
  } else {
    // Whole 8-byte loads while they stay inside this bucket's codes (spread ignores the
    // bits above 8*B); a B-byte copy for the last few groups.
    const std::size_t wide = groups * B >= 8 ? (groups * B - 8) / B + 1 : 0;
    std::size_t g = 0;
    for (; g < wide; ++g) {
      std::uint64_t w;
      std::memcpy(&w, in + g * B, 8);
      w = spread<B>(w);
      std::memcpy(q + 8 * g, &w, 8);
    }
    for (; g < groups; ++g) {
      std::uint64_t w = 0;
      std::memcpy(&w, in + g * B, B);
      w = spread<B>(w);
      std::memcpy(q + 8 * g, &w, 8);
    }
  }
}

template <int B, bool Stochastic>
std::size_t quantize_impl(const float* g, float* residual, std::size_t n, std::size_t bucket,
                          std::uint64_t key, std::uint8_t* payload, void* workspace) {
  constexpr int kLevels = (1 << B) - 1;
  float* xbuf = static_cast<float*>(workspace);
  auto* qbuf = reinterpret_cast<std::uint8_t*>(xbuf + bucket);
  const std::uint32_t header[2] = {quant::header_word(B), static_cast<std::uint32_t>(n)};
  std::memcpy(payload, header, sizeof header);
  std::uint8_t* meta = payload + quant::meta_offset();
  std::uint8_t* codes = payload + quant::codes_offset(n, bucket);
  std::size_t bad = 0;
  for (std::size_t start = 0, b = 0; start < n; start += bucket, ++b) {
    const std::size_t len = std::min(bucket, n - start);
    // With error feedback x lives in the residual itself, so the second pass turns it
    // into the new residual in place (one read and one write of the residual per step).
    float* x = residual ? residual + start : xbuf;
    bad += load_error_fed(g + start, residual ? residual + start : nullptr, x, len);
    float lo, hi;
    min_max(x, len, &lo, &hi);
    if (!is_finite(lo) || !is_finite(hi)) [[unlikely]] {
      bad += zero_overflow(x, len);
      min_max(x, len, &lo, &hi);
    }
    const BucketMeta m = quant::bucket_meta(lo, hi, B);
    const float pair[2] = {m.min, m.unit};
    std::memcpy(meta + 8 * b, pair, sizeof pair);
    const std::uint64_t bkey = Stochastic ? quant::bucket_key(key, b) : 0;
    for (std::size_t i = 0; i < len; ++i) {
      const float r = Stochastic ? quant::uniform(bkey, static_cast<std::uint32_t>(i)) : 0.5f;
      // Nearest rounding cannot pass the top level: (x - min) / unit <= L within a few
      // ulp, plus 1/2, stays below L + 1. Only the stochastic dither needs the clamp.
      const int q = Stochastic ? quant::encode_value(x[i], m, r, kLevels)
                               : quant::encode_unclamped(x[i], m, r);
      qbuf[i] = static_cast<std::uint8_t>(q);
      if (residual) x[i] = quant::residual_after(x[i], q, m);
    }
    const std::size_t groups = (len + 7) / 8;
    for (std::size_t i = len; i < groups * 8; ++i) qbuf[i] = 0;
    pack<B>(qbuf, groups, codes + start / 8 * B);
  }
  const std::size_t used = (n + 7) / 8 * B;
  std::memset(codes + used, 0, quant::code_bytes(n, B) - used);
  return bad;
}

template <int B>
void dequantize_impl(const std::uint8_t* payloads, std::size_t stride, int ranks, std::size_t n,
                     std::size_t bucket, float scale, float* out, std::uint8_t* qbuf) {
  const std::size_t codes_at = quant::codes_offset(n, bucket);
  // Bucket-major so each output slice stays in L1 while every rank's share is added to it,
  // always in rank order: every rank computes bitwise the same sum.
  for (std::size_t start = 0, b = 0; start < n; start += bucket, ++b) {
    const std::size_t len = std::min(bucket, n - start);
    const std::size_t groups = (len + 7) / 8;
    float* o = out + start;
    for (int r = 0; r < ranks; ++r) {
      const std::uint8_t* p = payloads + static_cast<std::size_t>(r) * stride;
      float pair[2];
      std::memcpy(pair, p + quant::meta_offset() + 8 * b, sizeof pair);
      unpack<B>(p + codes_at + start / 8 * B, groups, qbuf);
      if (r == 0) {
        for (std::size_t i = 0; i < len; ++i) o[i] = quant::decode_value(qbuf[i], pair[0], pair[1]);
      } else {
        for (std::size_t i = 0; i < len; ++i) {
          o[i] = fadd(o[i], quant::decode_value(qbuf[i], pair[0], pair[1]));
        }
      }
    }
    for (std::size_t i = 0; i < len; ++i) o[i] = fmul(o[i], scale);
  }
}

// Bits dispatch: the inner loops are templated on the bit width, the one thing that
// changes them (its shifts and masks become constants), and on nothing else.
template <template <int> class F, typename... Args>
auto dispatch_bits(int bits, Args&&... args) {
  switch (bits) {
    case 1: return F<1>::run(args...);
    case 2: return F<2>::run(args...);
    case 3: return F<3>::run(args...);
    case 4: return F<4>::run(args...);
    case 5: return F<5>::run(args...);
    case 6: return F<6>::run(args...);
    case 7: return F<7>::run(args...);
    default: return F<8>::run(args...);
  }
}

template <int B>
struct QuantizeOp {
  static std::size_t run(const float* g, float* residual, std::size_t n,
                         const QuantizeParams& p, std::uint8_t* payload, void* ws) {
    return p.stochastic ? quantize_impl<B, true>(g, residual, n, p.bucket, p.rng_key, payload, ws)
                        : quantize_impl<B, false>(g, residual, n, p.bucket, p.rng_key, payload, ws);
  }
};

template <int B>
struct DequantizeOp {
  static int run(const std::uint8_t* payloads, std::size_t stride, int ranks, std::size_t n,
                 std::size_t bucket, float scale, float* out, std::uint8_t* qbuf) {
    dequantize_impl<B>(payloads, stride, ranks, n, bucket, scale, out, qbuf);
    return 0;
  }
};

}  // namespace

std::size_t quantize(const float* g, float* residual, std::size_t n, const QuantizeParams& params,
                            std::uint8_t* payload, void* workspace) {
  return dispatch_bits<QuantizeOp>(params.bits, g, residual, n, params, payload, workspace);
}

void dequantize(const std::uint8_t* payloads, std::size_t stride, int ranks, std::size_t n, int bits,
                       std::size_t bucket, float scale, float* out, void* workspace) {
  auto* qbuf = static_cast<std::uint8_t*>(workspace);
  dispatch_bits<DequantizeOp>(bits, payloads, stride, ranks, n, bucket, scale, out, qbuf);
}

}  // namespace gradcomm::kernels::GRADCOMM_QUANT_ISA
