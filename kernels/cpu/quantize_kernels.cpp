#include "kernels/cpu/quantize_kernels.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace gradcomm::kernels {

static_assert(std::endian::native == std::endian::little,
              "the quantized wire format is little-endian; add byte swaps for this host");

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

// x = finite(g) ? g : 0 (+ residual); an x that overflows is zeroed too. Returns how
// many elements were dropped.
std::size_t load_error_fed(const float* g, const float* residual, float* x, std::size_t len) {
  std::size_t bad = 0;
  for (std::size_t i = 0; i < len; ++i) {
    const float gi = g[i];
    const bool ok_g = quant::finite(gi);
    const float xi = (ok_g ? gi : 0.0f) + (residual ? residual[i] : 0.0f);
    const bool ok_x = quant::finite(xi);
    bad += static_cast<std::size_t>(!(ok_g && ok_x));
    x[i] = ok_x ? xi : 0.0f;
  }
  return bad;
}

template <int B>
void pack(const std::uint8_t* q, std::size_t groups, std::uint8_t* out) {
  if constexpr (B == 8) {
    std::memcpy(out, q, groups * 8);
  } else {
    for (std::size_t g = 0; g < groups; ++g) {
      std::uint64_t w = 0;
      for (int j = 0; j < 8; ++j) w |= static_cast<std::uint64_t>(q[8 * g + j]) << (B * j);
      std::memcpy(out + g * B, &w, B);
    }
  }
}

template <int B>
void unpack(const std::uint8_t* in, std::size_t groups, std::uint8_t* q) {
  if constexpr (B == 8) {
    std::memcpy(q, in, groups * 8);
  } else {
    constexpr std::uint64_t kMask = (1u << B) - 1;
    for (std::size_t g = 0; g < groups; ++g) {
      std::uint64_t w = 0;
      std::memcpy(&w, in + g * B, B);
      for (int j = 0; j < 8; ++j) q[8 * g + j] = static_cast<std::uint8_t>((w >> (B * j)) & kMask);
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
    const BucketMeta m = quant::bucket_meta(lo, hi, B);
    const float pair[2] = {m.min, m.unit};
    std::memcpy(meta + 8 * b, pair, sizeof pair);
    const std::uint64_t bkey = Stochastic ? quant::bucket_key(key, b) : 0;
    for (std::size_t i = 0; i < len; ++i) {
      const float r = Stochastic ? quant::uniform(bkey, static_cast<std::uint32_t>(i)) : 0.5f;
      const int q = quant::encode_value(x[i], m, r, kLevels);
      qbuf[i] = static_cast<std::uint8_t>(q);
      if (residual) x[i] = quant::sub(x[i], quant::decode_value(q, m.min, m.unit));
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
          o[i] = quant::add(o[i], quant::decode_value(qbuf[i], pair[0], pair[1]));
        }
      }
    }
    for (std::size_t i = 0; i < len; ++i) o[i] = quant::mul(o[i], scale);
  }
}

// Bits dispatch: the inner loops are templated on the bit width (STYLE.md: kernels are
// templated on what changes the inner loop, nothing else).
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

std::size_t quantize_workspace_bytes(std::size_t bucket) {
  return bucket * sizeof(float) + bucket;
}

std::size_t quantize_error_feedback(const float* g, float* residual, std::size_t n,
                                    const QuantizeParams& params, std::uint8_t* payload,
                                    void* workspace) {
  return dispatch_bits<QuantizeOp>(params.bits, g, residual, n, params, payload, workspace);
}

int find_corrupt_payload(const std::uint8_t* payloads, std::size_t stride, int ranks,
                         std::size_t n, int bits, std::size_t bucket, const char** why) {
  const std::size_t nb = quant::num_buckets(n, bucket);
  const std::size_t codes_at = quant::codes_offset(n, bucket);
  const std::size_t used = (n + 7) / 8 * static_cast<std::size_t>(bits);
  const std::size_t total = quant::code_bytes(n, bits);
  for (int r = 0; r < ranks; ++r) {
    const std::uint8_t* p = payloads + static_cast<std::size_t>(r) * stride;
    std::uint32_t header[2];
    std::memcpy(header, p, sizeof header);
    if (header[0] != quant::header_word(bits)) {
      *why = "header (magic, version or bit width) does not match this layer's setting";
      return r;
    }
    if (header[1] != static_cast<std::uint32_t>(n)) {
      *why = "header element count does not match the layer";
      return r;
    }
    for (std::size_t b = 0; b < nb; ++b) {
      float pair[2];
      std::memcpy(pair, p + quant::meta_offset() + 8 * b, sizeof pair);
      if (!quant::meta_valid(pair[0], pair[1], bits)) {
        *why = "bucket metadata (min, unit) is not finite, or unit < 0, or the top level overflows";
        return r;
      }
    }
    const std::uint8_t* codes = p + codes_at;
    if (const std::size_t tail = n % 8; tail != 0) {
      std::uint64_t w = 0;
      std::memcpy(&w, codes + used - bits, static_cast<std::size_t>(bits));
      if ((w >> (bits * static_cast<int>(tail))) != 0) {
        *why = "padding codes after the last element are not zero";
        return r;
      }
    }
    for (std::size_t i = used; i < total; ++i) {
      if (codes[i] != 0) {
        *why = "padding bytes after the codes are not zero";
        return r;
      }
    }
  }
  return -1;
}

void dequantize_sum(const std::uint8_t* payloads, std::size_t stride, int ranks, std::size_t n,
                    int bits, std::size_t bucket, float scale, float* out, void* workspace) {
  auto* qbuf = static_cast<std::uint8_t*>(workspace);
  dispatch_bits<DequantizeOp>(bits, payloads, stride, ranks, n, bucket, scale, out, qbuf);
}

void bucket_min_max(const float* x, std::size_t n, std::size_t bucket, float* mins, float* maxs) {
  for (std::size_t start = 0, b = 0; start < n; start += bucket, ++b) {
    min_max(x + start, std::min(bucket, n - start), mins + b, maxs + b);
  }
}

double quantize_squared_error(const float* x, std::size_t n, std::size_t bucket, int bits,
                              bool stochastic, const float* mins, const float* maxs) {
  const int levels = (1 << bits) - 1;
  double total = 0;
  for (std::size_t start = 0, b = 0; start < n; start += bucket, ++b) {
    const std::size_t len = std::min(bucket, n - start);
    const float* xs = x + start;
    const BucketMeta m = quant::bucket_meta(mins[b], maxs[b], bits);
    float sum = 0;
    if (m.unit == 0.0f) {  // constant or not sent: the error is the distance to min
      for (std::size_t i = 0; i < len; ++i) {
        const float d = xs[i] - m.min;
        sum += d * d;
      }
    } else if (stochastic) {
      for (std::size_t i = 0; i < len; ++i) {
        const float t = (xs[i] - m.min) * m.inv_unit;
        const float f = t - static_cast<float>(static_cast<int>(t));
        sum += f * (1.0f - f);
      }
      sum *= m.unit * m.unit;
    } else {
      for (std::size_t i = 0; i < len; ++i) {
        const int q = quant::encode_value(xs[i], m, 0.5f, levels);
        const float d = xs[i] - quant::decode_value(q, m.min, m.unit);
        sum += d * d;
      }
    }
    total += sum;
  }
  return total;
}

}  // namespace gradcomm::kernels
