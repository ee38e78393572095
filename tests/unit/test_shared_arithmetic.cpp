// The CPU kernels against the per-element functions they share with the CUDA kernels
// (kernels/shared/): each kernel's output must be bitwise what an element-by-element
// loop over the shared function gives. The CUDA kernels call the same functions, so these
// tests check the GPU's arithmetic on machines without a GPU: a CPU kernel that drifts
// from the shared rule (an FMA, another rounding, another order) fails here.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/float16.h"
#include "gaussian_values.h"
#include "kernels/cpu/dense_kernels.h"
#include "kernels/cpu/dgc_kernels.h"
#include "kernels/cpu/onebit_kernels.h"
#include "kernels/cpu/quantize_kernels.h"
#include "kernels/shared/dgc_math.h"
#include "kernels/shared/onebit_math.h"
#include "kernels/shared/quantize_math.h"

namespace gradcomm {
namespace {

namespace dgc = kernels::dgc;
namespace quant = kernels::quant;
namespace onebit = kernels::onebit;
using testing::gaussian_values;

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// Gaussian values with the cases the rules single out: non-finite, signed zeros, values
// that overflow a half, subnormals.
std::vector<float> awkward_values(std::size_t n, unsigned seed, float scale = 1.0f) {
  std::vector<float> v = gaussian_values(n, seed, scale);
  const float specials[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(), 0.0f, -0.0f, 7.0e4f, -1.0e5f, 1.0e-40f};
  for (std::size_t j = 0; j < std::size(specials) && 3 * j + 1 < n; ++j) v[3 * j + 1] = specials[j];
  return v;
}

TEST(SharedArithmetic, DgcAccumulateIsTheElementRule) {
  const std::size_t n = 1000;  // several of the kernel's 256-element chunks and a tail
  const std::vector<float> g = awkward_values(n, 1), u0 = gaussian_values(n, 2, 0.1f), v0 = gaussian_values(n, 3);
  for (const bool nesterov : {false, true}) {
    for (const float s : {1.0f, 0.37f}) {
      std::vector<float> u = u0, v = v0;
      kernels::DgcAccumulateArgs args;
      args.momentum = 0.9f;
      args.nesterov = nesterov;
      args.grad_scale = s;
      const kernels::DgcAccumulateResult r = kernels::dgc_accumulate(g.data(), u.data(), v.data(), n, args);
      std::vector<float> eu = u0, ev = v0;
      std::size_t bad = 0;
      for (std::size_t i = 0; i < n; ++i) {
        const bool ok = nesterov ? (s != 1.0f ? dgc::accumulate<true, true>(g[i], eu[i], ev[i], 0.9f, s)
                                              : dgc::accumulate<true, false>(g[i], eu[i], ev[i], 0.9f, s))
                                 : (s != 1.0f ? dgc::accumulate<false, true>(g[i], eu[i], ev[i], 0.9f, s)
                                              : dgc::accumulate<false, false>(g[i], eu[i], ev[i], 0.9f, s));
        bad += !ok;
      }
      EXPECT_EQ(r.nonfinite, bad);
      EXPECT_TRUE(same_bits(u, eu)) << "u, nesterov " << nesterov << " scale " << s;
      EXPECT_TRUE(same_bits(v, ev)) << "v, nesterov " << nesterov << " scale " << s;
    }
  }
}

TEST(SharedArithmetic, DgcDenseStepsAreTheElementRules) {
  const std::size_t n = 333;
  const std::vector<float> in = awkward_values(n, 4);
  for (const float s : {1.0f, 0.5f, 3.0f}) {
    std::vector<float> f32(n);
    std::vector<std::uint16_t> f16(n);
    const std::size_t bad32 = kernels::dgc_scaled_copy_f32(in.data(), s, f32.data(), n);
    const std::size_t bad16 = kernels::dgc_scaled_copy_f16(in.data(), s, f16.data(), n);
    std::vector<float> e32(n);
    std::vector<std::uint16_t> e16(n);
    std::size_t bad = 0;
    for (std::size_t i = 0; i < n; ++i) {
      bad += !kernels::is_finite(in[i]);
      e32[i] = dgc::scaled_or_zero(in[i], s);
      e16[i] = float_to_half(dgc::scaled_or_zero(in[i], s));
    }
    EXPECT_EQ(bad32, bad);
    EXPECT_EQ(bad16, bad);
    EXPECT_TRUE(same_bits(f32, e32));
    EXPECT_TRUE(same_bits(f16, e16));
  }
  const std::vector<float> avg0 = gaussian_values(n, 5), u0 = gaussian_values(n, 6);
  for (const bool nesterov : {false, true}) {
    std::vector<float> avg = avg0, u = u0, eavg = avg0, eu = u0;
    kernels::dgc_dense_momentum(avg.data(), u.data(), n, 0.9f, nesterov);
    for (std::size_t i = 0; i < n; ++i) {
      nesterov ? dgc::dense_momentum<true>(eavg[i], eu[i], 0.9f) : dgc::dense_momentum<false>(eavg[i], eu[i], 0.9f);
    }
    EXPECT_TRUE(same_bits(avg, eavg)) << "nesterov " << nesterov;
    EXPECT_TRUE(same_bits(u, eu)) << "nesterov " << nesterov;
  }
}

TEST(SharedArithmetic, DgcPackAndScatterAreTheElementRules) {
  const std::size_t n = 500, k = 40;
  std::vector<float> v0 = awkward_values(n, 7, 3.0e4f), u0 = gaussian_values(n, 8);
  for (float& x : v0) x = std::isfinite(x) ? x : 1.0f;  // v is finite: non-finite gradients never reach it
  std::vector<std::uint32_t> idx(k);
  for (std::size_t j = 0; j < k; ++j) idx[j] = static_cast<std::uint32_t>(j * 12 + 1);
  for (const bool half : {false, true}) {
    std::vector<float> v = v0, u = u0, ev = v0, eu = u0;
    std::vector<std::uint8_t> block(dgc::payload_bytes(k, half), 0);
    const auto count = static_cast<std::uint32_t>(k);
    std::memcpy(block.data(), &count, 4);
    std::memcpy(block.data() + dgc::kPayloadHeaderBytes, idx.data(), 4 * k);
    std::uint8_t* values = block.data() + dgc::values_offset(k);
    if (half) {
      kernels::dgc_pack_f16(idx.data(), k, v.data(), u.data(), true, reinterpret_cast<std::uint16_t*>(values));
    } else {
      kernels::dgc_pack_f32(idx.data(), k, v.data(), u.data(), true, reinterpret_cast<float*>(values));
    }
    for (std::size_t j = 0; j < k; ++j) {
      const float sent = half ? half_to_float(dgc::take_f16(ev[idx[j]])) : dgc::take_f32(ev[idx[j]]);
      eu[idx[j]] = 0.0f;
      EXPECT_EQ(std::bit_cast<std::uint32_t>(dgc::payload_value(block.data(), k, j, half)),
                std::bit_cast<std::uint32_t>(sent))
          << "slot " << j;
      EXPECT_EQ(dgc::payload_index(block.data(), j), idx[j]);
    }
    EXPECT_TRUE(same_bits(v, ev)) << "half " << half;
    EXPECT_TRUE(same_bits(u, eu)) << "half " << half;
    // Decode: two ranks' blocks (the same one twice) added in rank order from +0.
    std::vector<float> out(n, 0.0f), expect(n, 0.0f);
    for (int r = 0; r < 2; ++r) kernels::dgc_scatter_add(block.data(), k, half, 0.5f, out.data());
    for (int r = 0; r < 2; ++r) {
      for (std::size_t j = 0; j < k; ++j) {
        float& o = expect[dgc::payload_index(block.data(), j)];
        o = kernels::fadd(o, dgc::average_term(dgc::payload_value(block.data(), k, j, half), 0.5f));
      }
    }
    EXPECT_TRUE(same_bits(out, expect)) << "half " << half;
  }
}

TEST(SharedArithmetic, DenseKernelsAreTheElementRules) {
  const std::size_t n = 301;
  const std::vector<float> in = awkward_values(n, 9);
  std::vector<float> copy(n), scaled(n), from_half(n);
  std::vector<std::uint16_t> half(n);
  const std::size_t bad_copy = kernels::copy_zeroing_nonfinite(in.data(), copy.data(), n);
  const std::size_t bad_half = kernels::to_half_zeroing_nonfinite(in.data(), half.data(), n);
  kernels::scale(in.data(), 0.25f, scaled.data(), n);
  kernels::half_to_float_scaled(half.data(), 0.25f, from_half.data(), n);
  std::size_t bad = 0;
  for (std::size_t i = 0; i < n; ++i) {
    bad += !kernels::is_finite(in[i]);
    EXPECT_EQ(std::bit_cast<std::uint32_t>(copy[i]), std::bit_cast<std::uint32_t>(kernels::finite_or_zero(in[i])));
    EXPECT_EQ(half[i], float_to_half(kernels::finite_or_zero(in[i])));
    const float s = kernels::fmul(in[i], 0.25f);
    EXPECT_TRUE(std::bit_cast<std::uint32_t>(scaled[i]) == std::bit_cast<std::uint32_t>(s) || (std::isnan(s) && std::isnan(scaled[i])));
    EXPECT_EQ(std::bit_cast<std::uint32_t>(from_half[i]),
              std::bit_cast<std::uint32_t>(kernels::fmul(half_to_float(half[i]), 0.25f)));
  }
  EXPECT_EQ(bad_copy, bad);
  EXPECT_EQ(bad_half, bad);
}

// The quantizer as one loop over the shared functions: x, the bucket's range and
// metadata, every code and the residual it leaves, the packed bit stream.
struct QuantizeReference {
  std::vector<std::uint8_t> payload;
  std::vector<float> residual;
  std::size_t nonfinite = 0;
};

QuantizeReference reference_quantize(const std::vector<float>& g, const std::vector<float>* residual,
                                     const kernels::QuantizeParams& p) {
  const std::size_t n = g.size();
  const int levels = (1 << p.bits) - 1;
  QuantizeReference r;
  r.payload.assign(quant::payload_bytes(n, p.bits, p.bucket), 0);
  const std::uint32_t header[2] = {quant::header_word(p.bits), static_cast<std::uint32_t>(n)};
  std::memcpy(r.payload.data(), header, sizeof header);
  std::vector<float> x(n);
  for (std::size_t i = 0; i < n; ++i) {
    r.nonfinite += !kernels::is_finite(g[i]);
    x[i] = quant::error_fed(g[i], residual ? (*residual)[i] : 0.0f);
    if (!kernels::is_finite(x[i])) {
      x[i] = 0.0f;
      r.nonfinite += 1;
    }
  }
  std::uint8_t* codes = r.payload.data() + quant::codes_offset(n, p.bucket);
  for (std::size_t b = 0; b * p.bucket < n; ++b) {
    const std::size_t start = b * p.bucket, end = std::min(n, start + p.bucket);
    float lo = x[start], hi = x[start];
    for (std::size_t i = start; i < end; ++i) {
      lo = std::min(lo, x[i]);
      hi = std::max(hi, x[i]);
    }
    const quant::BucketMeta m = quant::bucket_meta(lo, hi, p.bits);
    const float pair[2] = {m.min, m.unit};
    std::memcpy(r.payload.data() + quant::meta_offset() + 8 * b, pair, sizeof pair);
    const std::uint64_t key = quant::bucket_key(p.rng_key, b);
    for (std::size_t i = start; i < end; ++i) {
      const float dither = p.stochastic ? quant::uniform(key, static_cast<std::uint32_t>(i - start)) : 0.5f;
      const int q = quant::encode_value(x[i], m, dither, levels);
      for (int bit = 0; bit < p.bits; ++bit) {
        const std::size_t at = i * static_cast<std::size_t>(p.bits) + static_cast<std::size_t>(bit);
        if ((q >> bit) & 1) codes[at / 8] |= static_cast<std::uint8_t>(1u << (at % 8));
      }
      x[i] = quant::residual_after(x[i], q, m);
    }
  }
  if (residual) r.residual = x;
  return r;
}

TEST(SharedArithmetic, QuantizeIsTheElementRuleOnEveryBuild) {
  for (int bits = 1; bits <= 8; ++bits) {
    for (const bool stochastic : {false, true}) {
      for (const std::size_t n : {std::size_t{5}, std::size_t{1031}}) {
        kernels::QuantizeParams p;
        p.bits = bits;
        p.bucket = bits % 2 ? 64 : 512;
        p.stochastic = stochastic;
        p.rng_key = quant::rng_key(3, 1, 2, 40 + bits);
        std::vector<float> g = awkward_values(n, 10u + bits, 2.0f);
        std::vector<float> residual = gaussian_values(n, 20u + bits, 0.1f);
        g[0] = residual[0] = 3.0e38f;  // finite, but their sum is not: counted and zeroed
        const QuantizeReference want = reference_quantize(g, &residual, p);
        std::vector<float> ws(2 * p.bucket);
        for (const bool avx2 : {false, true}) {
          if (avx2 && !kernels::use_avx2()) continue;
          std::vector<float> got_residual = residual;
          std::vector<std::uint8_t> payload(want.payload.size(), 0xcd);
          const std::size_t bad =
              avx2 ? kernels::avx2::quantize(g.data(), got_residual.data(), n, p, payload.data(), ws.data())
                   : kernels::baseline::quantize(g.data(), got_residual.data(), n, p, payload.data(), ws.data());
          const auto where = ::testing::Message() << "bits " << bits << " stochastic " << stochastic << " n " << n
                                                  << " avx2 " << avx2;
          EXPECT_EQ(payload, want.payload) << where;
          EXPECT_TRUE(same_bits(got_residual, want.residual)) << where;
          EXPECT_EQ(bad, want.nonfinite) << where;
        }
        // Decoding: the codes read back one by one, summed over ranks in order, scaled.
        std::vector<std::uint8_t> two = want.payload;
        two.insert(two.end(), want.payload.begin(), want.payload.end());
        std::vector<float> out(n), expect(n);
        kernels::dequantize_sum(two.data(), want.payload.size(), 2, n, bits, p.bucket, 0.5f, out.data(), ws.data());
        const std::uint8_t* codes = want.payload.data() + quant::codes_offset(n, p.bucket);
        for (std::size_t i = 0; i < n; ++i) {
          float pair[2];
          std::memcpy(pair, want.payload.data() + quant::meta_offset() + 8 * (i / p.bucket), sizeof pair);
          const float one = quant::decode_value(quant::code_at(codes, i, bits), pair[0], pair[1]);
          expect[i] = kernels::fmul(kernels::fadd(one, one), 0.5f);
        }
        EXPECT_TRUE(same_bits(out, expect)) << "decode, bits " << bits;
      }
    }
  }
}

TEST(SharedArithmetic, QuantizeProfileErrorIsTheElementRule) {
  const std::size_t n = 700, bucket = 64;
  const std::vector<float> x = gaussian_values(n, 30);
  std::vector<float> mins(quant::num_buckets(n, bucket)), maxs(mins.size());
  kernels::bucket_min_max(x.data(), n, bucket, mins.data(), maxs.data());
  for (int bits : {1, 4, 8}) {
    for (const bool stochastic : {false, true}) {
      double expect = 0;
      for (std::size_t b = 0; b < mins.size(); ++b) {
        const quant::BucketMeta m = quant::bucket_meta(mins[b], maxs[b], bits);
        float sum = 0;
        for (std::size_t i = b * bucket; i < std::min(n, (b + 1) * bucket); ++i) {
          sum = kernels::fadd(sum, m.unit == 0.0f ? quant::squared_error_unsent(x[i], m)
                                   : stochastic   ? quant::stochastic_variance_term(x[i], m)
                                                  : quant::squared_error_nearest(x[i], m, (1 << bits) - 1));
        }
        if (stochastic && m.unit != 0.0f) sum = kernels::fmul(sum, kernels::fmul(m.unit, m.unit));
        expect += sum;
      }
      EXPECT_EQ(kernels::quantize_squared_error(x.data(), n, bucket, bits, stochastic, mins.data(), maxs.data()),
                expect)
          << "bits " << bits << " stochastic " << stochastic;
    }
  }
}

TEST(SharedArithmetic, OneBitKernelsAreTheElementRules) {
  const float scale = 0.3f;
  const std::size_t count = 8 * 37, x_count = count - 13;
  const std::vector<float> x = awkward_values(x_count, 40);
  const std::vector<float> err0 = gaussian_values(count, 41, 0.2f);
  std::vector<float> err = err0, expect_err = err0;
  std::vector<std::uint8_t> bits(count / 8), expect_bits(count / 8, 0);
  kernels::onebit_pack_with_error(x.data(), x_count, err.data(), count, scale, bits.data());
  for (std::size_t i = 0; i < count; ++i) {
    const float v = onebit::compensated(i < x_count ? x[i] : 0.0f, expect_err[i]);
    if (onebit::positive(v)) expect_bits[i / 8] |= static_cast<std::uint8_t>(1u << (i % 8));
    expect_err[i] = onebit::error_after(v, scale);
  }
  EXPECT_EQ(bits, expect_bits);
  EXPECT_TRUE(same_bits(err, expect_err));

  // The server: 3 ranks' segments summed in rank order, averaged, plus its error.
  const int ranks = 3;
  const std::size_t chunk = 8 * 70, stride = onebit::segment_bytes(chunk * ranks, ranks);
  std::vector<std::uint8_t> segments(ranks * stride, 0);
  for (int r = 0; r < ranks; ++r) {
    const float s = 0.1f * static_cast<float>(r + 1);
    std::memcpy(segments.data() + r * stride, &s, sizeof s);
    for (std::size_t b = 0; b < chunk / 8; ++b) segments[r * stride + 4 + b] = static_cast<std::uint8_t>(b * 37 + r);
  }
  std::vector<float> es = gaussian_values(chunk, 42, 0.05f), expect_es = es;
  kernels::onebit_server_accumulate(segments.data(), stride, ranks, es.data(), chunk);
  for (std::size_t i = 0; i < chunk; ++i) {
    float sum = 0.0f;
    for (int r = 0; r < ranks; ++r) {
      float s;
      std::memcpy(&s, segments.data() + r * stride, sizeof s);
      sum = kernels::fadd(sum, onebit::signed_scale(onebit::sign_bit(segments.data() + r * stride + 4, i), s));
    }
    expect_es[i] = onebit::server_value(sum, static_cast<float>(ranks), expect_es[i]);
  }
  EXPECT_TRUE(same_bits(es, expect_es));

  std::vector<float> out(chunk - 3), expect_out(chunk - 3);
  kernels::onebit_unpack(segments.data() + 4, 0.7f, out.data(), out.size());
  for (std::size_t i = 0; i < out.size(); ++i) {
    expect_out[i] = onebit::signed_scale(onebit::sign_bit(segments.data() + 4, i), 0.7f);
  }
  EXPECT_TRUE(same_bits(out, expect_out));
  EXPECT_EQ(kernels::onebit_scale(12.5, 50), onebit::scale_of(12.5, 50));
}

}  // namespace
}  // namespace gradcomm
