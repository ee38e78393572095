#include "kernels/cpu/onebit_kernels.h"

#include <cmath>
#include <cstring>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace gradcomm::kernels {
namespace {

// (x - x) is 0 for finite x and NaN otherwise; branch-free so loops vectorize.
inline bool is_finite(float x) { return (x - x) == 0.0f; }

// Independent double lanes: the compiler vectorizes them without reassociating one
// running sum (which it may not do without -ffast-math), and double keeps the norm
// accurate to well under the fp32 rounding of the scale.
constexpr std::size_t kLanes = 8;

}  // namespace

SumSq onebit_compensated_sumsq(const float* x, std::size_t x_count, const float* err,
                               std::size_t count) {
  double lane[kLanes] = {};
  std::size_t bad_lane[kLanes] = {};
  std::size_t i = 0;
  for (; i + kLanes <= x_count; i += kLanes) {
    for (std::size_t k = 0; k < kLanes; ++k) {
      const float xi = x[i + k];
      const bool ok = is_finite(xi);
      bad_lane[k] += !ok;
      const float v = (ok ? xi : 0.0f) + err[i + k];
      lane[k] += static_cast<double>(v) * static_cast<double>(v);
    }
  }
  SumSq result;
  for (; i < x_count; ++i) {
    const float xi = x[i];
    const bool ok = is_finite(xi);
    result.nonfinite += !ok;
    const float v = (ok ? xi : 0.0f) + err[i];
    result.sumsq += static_cast<double>(v) * static_cast<double>(v);
  }
  for (; i + kLanes <= count; i += kLanes) {
    for (std::size_t k = 0; k < kLanes; ++k) {
      const double v = err[i + k];
      lane[k] += v * v;
    }
  }
  for (; i < count; ++i) result.sumsq += static_cast<double>(err[i]) * static_cast<double>(err[i]);
  for (std::size_t k = 0; k < kLanes; ++k) {
    result.sumsq += lane[k];
    result.nonfinite += bad_lane[k];
  }
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
      const float xi = xb[k];
      const float v = (is_finite(xi) ? xi : 0.0f) + eb[k];
      const bool positive = v >= 0.0f;
      byte |= static_cast<unsigned>(positive) << k;
      eb[k] = v - (positive ? scale : -scale);
    }
    bits[b] = static_cast<std::uint8_t>(byte);
  }
  for (std::size_t b = full; b < count / 8; ++b) {
    float* eb = err + 8 * b;
    unsigned byte = 0;
    for (unsigned k = 0; k < 8; ++k) {
      const std::size_t i = 8 * b + k;
      const float xi = i < x_count ? x[i] : 0.0f;
      const float v = (is_finite(xi) ? xi : 0.0f) + eb[k];
      const bool positive = v >= 0.0f;
      byte |= static_cast<unsigned>(positive) << k;
      eb[k] = v - (positive ? scale : -scale);
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
  double lane[kLanes] = {};
  float acc[kBlock];
  for (std::size_t start = 0; start < count; start += kBlock) {
    const std::size_t len = count - start < kBlock ? count - start : kBlock;
    for (std::size_t i = 0; i < len; ++i) acc[i] = 0.0f;
    for (int r = 0; r < ranks; ++r) {
      const std::uint8_t* segment = segments + static_cast<std::size_t>(r) * stride;
      float scale;
      std::memcpy(&scale, segment, sizeof scale);
      const std::uint8_t* bits = segment + sizeof(float) + start / 8;
      for (std::size_t i = 0; i < len; ++i) {
        const bool positive = (bits[i / 8] >> (i % 8)) & 1u;
        acc[i] += positive ? scale : -scale;
      }
    }
    float* e = err + start;
    std::size_t i = 0;
    for (; i + kLanes <= len; i += kLanes) {
      for (std::size_t k = 0; k < kLanes; ++k) {
        const float y = acc[i + k] / divisor + e[i + k];
        e[i + k] = y;
        lane[k] += static_cast<double>(y) * static_cast<double>(y);
      }
    }
    for (; i < len; ++i) {
      const float y = acc[i] / divisor + e[i];
      e[i] = y;
      lane[0] += static_cast<double>(y) * static_cast<double>(y);
    }
  }
  double sumsq = 0;
  for (std::size_t k = 0; k < kLanes; ++k) sumsq += lane[k];
  return sumsq;
}

void onebit_unpack(const std::uint8_t* bits, float scale, float* out, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) {
    out[i] = ((bits[i / 8] >> (i % 8)) & 1u) ? scale : -scale;
  }
}

float onebit_scale(double sumsq, std::size_t count) {
  return count == 0 ? 0.0f : static_cast<float>(std::sqrt(sumsq / static_cast<double>(count)));
}

}  // namespace gradcomm::kernels
