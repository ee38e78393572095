#include "kernels/cpu/onebit_kernels.h"

#include <cmath>
#include <cstring>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "kernels/shared/onebit_math.h"

namespace gradcomm::kernels {
namespace {

// The squared norm sums 16 fp32 lanes over blocks of 256 elements, then adds each block
// into double. Lanes are independent, so the compiler vectorizes them without
// reassociating one running sum (which it may not do without -ffast-math); fp32 inside a
// block (16 terms per lane, at most 1e-6 relative) keeps the pass memory-bound where
// converting every term to double made it compute-bound, and double across blocks keeps
// the norm's error independent of the length.
constexpr std::size_t kLanes = 16;
constexpr std::size_t kBlockRows = 16;
constexpr std::size_t kSumBlock = kLanes * kBlockRows;

// Adds the squares of (x[i] if i < x_count, else 0; non-finite as 0) + err[i] for
// i in [begin, end) to `result`, counting non-finite x.
template <bool kWithX>
void add_squares(const float* x, const float* err, std::size_t begin, std::size_t end, SumSq& result) {
  std::size_t i = begin;
  for (; i + kSumBlock <= end; i += kSumBlock) {
    float lane[kLanes] = {};
    std::uint32_t bad[kLanes] = {};
    for (std::size_t row = 0; row < kBlockRows; ++row) {
      for (std::size_t k = 0; k < kLanes; ++k) {
        const std::size_t j = i + row * kLanes + k;
        float v = err[j];
        if constexpr (kWithX) {
          bad[k] += !is_finite(x[j]);
          v = onebit::compensated(x[j], v);
        }
        lane[k] += v * v;
      }
    }
    double block = 0;
    for (std::size_t k = 0; k < kLanes; ++k) {
      block += lane[k];
      result.nonfinite += bad[k];
    }
    if (!std::isfinite(block)) [[unlikely]] {
      // A square overflowed fp32 (|v| > 1.8e19): redo this block in double.
      block = 0;
      for (std::size_t j = i; j < i + kSumBlock; ++j) {
        const float v = kWithX ? onebit::compensated(x[j], err[j]) : err[j];
        block += static_cast<double>(v) * static_cast<double>(v);
      }
    }
    result.sumsq += block;
  }
  for (; i < end; ++i) {
    float v = err[i];
    if constexpr (kWithX) {
      result.nonfinite += !is_finite(x[i]);
      v = onebit::compensated(x[i], v);
    }
    result.sumsq += static_cast<double>(v) * static_cast<double>(v);
  }
}

#if defined(__SSE2__)
// +scale where a sign bit is set, -scale where it is clear (scale >= 0: the sign bit is
// OR-ed in, the same value as the scalar `positive ? scale : -scale`), for the 8
// elements of one byte of signs.
struct SignedScales {
  __m128 low, high;  // elements 0-3 and 4-7
};
inline SignedScales expand_byte(unsigned byte, __m128 magnitude) {
  const __m128i spread = _mm_set1_epi32(static_cast<int>(byte));
  const __m128i low_bits = _mm_setr_epi32(1, 2, 4, 8);
  const __m128i high_bits = _mm_setr_epi32(16, 32, 64, 128);
  const __m128 sign_bit = _mm_set1_ps(-0.0f);
  const __m128 low_set = _mm_castsi128_ps(_mm_cmpeq_epi32(_mm_and_si128(spread, low_bits), low_bits));
  const __m128 high_set = _mm_castsi128_ps(_mm_cmpeq_epi32(_mm_and_si128(spread, high_bits), high_bits));
  return {_mm_or_ps(magnitude, _mm_andnot_ps(low_set, sign_bit)),
          _mm_or_ps(magnitude, _mm_andnot_ps(high_set, sign_bit))};
}
#endif

}  // namespace

SumSq onebit_compensated_sumsq(const float* x, std::size_t x_count, const float* err,
                               std::size_t count) {
  SumSq result;
  add_squares<true>(x, err, 0, x_count, result);
  add_squares<false>(x, err, x_count, count, result);
  return result;
}

void onebit_pack_with_error(const float* x, std::size_t x_count, float* err, std::size_t count,
                            float scale, std::uint8_t* bits) {
  const std::size_t full = x_count / 8;  // bytes whose 8 elements all come from x
  std::size_t b = 0;
#if defined(__SSE2__)
  // The compiler does not turn the byte assembly below into movemask; written out, this
  // is the same fp32 arithmetic element by element (bitwise equal to the scalar loop).
  const __m128 zero = _mm_setzero_ps();
  const __m128 sign_bit = _mm_set1_ps(-0.0f);
  const __m128 magnitude = _mm_set1_ps(scale);
  auto half = [&](const float* xp, float* ep) {
    __m128 xv = _mm_loadu_ps(xp);
    xv = _mm_and_ps(xv, _mm_cmpeq_ps(_mm_sub_ps(xv, xv), zero));  // non-finite -> 0
    const __m128 v = _mm_add_ps(xv, _mm_loadu_ps(ep));
    const __m128 positive = _mm_cmpge_ps(v, zero);
    _mm_storeu_ps(ep, _mm_sub_ps(v, _mm_or_ps(magnitude, _mm_andnot_ps(positive, sign_bit))));
    return _mm_movemask_ps(positive);
  };
  for (; b < full; ++b) {
    const int low = half(x + 8 * b, err + 8 * b);
    const int high = half(x + 8 * b + 4, err + 8 * b + 4);
    bits[b] = static_cast<std::uint8_t>(low | (high << 4));
  }
#endif
  for (; b < full; ++b) {
    const float* xb = x + 8 * b;
    float* eb = err + 8 * b;
    unsigned byte = 0;
    for (unsigned k = 0; k < 8; ++k) {
      const float v = onebit::compensated(xb[k], eb[k]);
      byte |= static_cast<unsigned>(onebit::positive(v)) << k;
      eb[k] = onebit::error_after(v, scale);
    }
    bits[b] = static_cast<std::uint8_t>(byte);
  }
  for (std::size_t b = full; b < count / 8; ++b) {
    float* eb = err + 8 * b;
    unsigned byte = 0;
    for (unsigned k = 0; k < 8; ++k) {
      const std::size_t i = 8 * b + k;
      const float v = onebit::compensated(i < x_count ? x[i] : 0.0f, eb[k]);
      byte |= static_cast<unsigned>(onebit::positive(v)) << k;
      eb[k] = onebit::error_after(v, scale);
    }
    bits[b] = static_cast<std::uint8_t>(byte);
  }
}

double onebit_server_accumulate(const std::uint8_t* segments, std::size_t stride, int ranks,
                                float* err, std::size_t count) {
  // Blocks of kBlock elements: the per-element sum runs over ranks in rank order (so the
  // result does not depend on how the loop is cut) while the block stays in L1.
  constexpr std::size_t kBlock = 512;
  const float divisor = static_cast<float>(ranks);
  alignas(16) float acc[kBlock];
  SumSq norm;
  for (std::size_t start = 0; start < count; start += kBlock) {
    const std::size_t len = count - start < kBlock ? count - start : kBlock;
    for (std::size_t i = 0; i < len; ++i) acc[i] = 0.0f;
    for (int r = 0; r < ranks; ++r) {
      const std::uint8_t* segment = segments + static_cast<std::size_t>(r) * stride;
      float scale;
      std::memcpy(&scale, segment, sizeof scale);
      const std::uint8_t* bits = segment + sizeof(float) + start / 8;
      std::size_t i = 0;
#if defined(__SSE2__)
      const __m128 magnitude = _mm_set1_ps(scale);
      for (; i + 8 <= len; i += 8) {
        const SignedScales v = expand_byte(bits[i / 8], magnitude);
        _mm_store_ps(acc + i, _mm_add_ps(_mm_load_ps(acc + i), v.low));
        _mm_store_ps(acc + i + 4, _mm_add_ps(_mm_load_ps(acc + i + 4), v.high));
      }
#endif
      for (; i < len; ++i) acc[i] = fadd(acc[i], onebit::signed_scale(onebit::sign_bit(bits, i), scale));
    }
    float* e = err + start;
    for (std::size_t i = 0; i < len; ++i) e[i] = onebit::server_value(acc[i], divisor, e[i]);
    add_squares<false>(nullptr, err, start, start + len, norm);
  }
  return norm.sumsq;
}

void onebit_unpack(const std::uint8_t* bits, float scale, float* out, std::size_t count) {
  std::size_t i = 0;
#if defined(__SSE2__)
  const __m128 magnitude = _mm_set1_ps(scale);
  for (; i + 8 <= count; i += 8) {
    const SignedScales v = expand_byte(bits[i / 8], magnitude);
    _mm_storeu_ps(out + i, v.low);
    _mm_storeu_ps(out + i + 4, v.high);
  }
#endif
  for (; i < count; ++i) out[i] = onebit::signed_scale(onebit::sign_bit(bits, i), scale);
}

float onebit_scale(double sumsq, std::size_t count) { return onebit::scale_of(sumsq, count); }

}  // namespace gradcomm::kernels
