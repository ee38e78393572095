// QuantizeCompressor and its CPU kernels: round-trip bounds, unbiased stochastic rounding,
// error feedback, multi-rank decode (ranks simulated in one process), payload validation.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "gaussian_values.h"
#include "gradcomm/quantize.h"
#include "kernels/cpu/quantize_kernels.h"

namespace gradcomm {
namespace {

namespace quant = kernels::quant;

using testing::gaussian_values;

LayerSpec matrix_layer(std::size_t n, const std::string& name = "w") {
  return LayerSpec{name, n, 2, false};
}

// One compressor per simulated rank, all set up on the same layers.
struct Ranks {
  std::vector<QuantizeCompressor> ranks;
  Ranks(int p, const QuantizeOptions& options, const std::vector<LayerSpec>& layers) {
    for (int r = 0; r < p; ++r) {
      ranks.emplace_back(options);
      ranks.back().setup(layers, p, r);
    }
  }
  // Every rank encodes its gradient, the payloads are concatenated in rank order (as the
  // allgather delivers them) and every rank decodes; returns each rank's output.
  std::vector<std::vector<float>> step(std::size_t layer, const std::vector<std::vector<float>>& grads,
                                       std::int64_t step = 0) {
    const std::size_t p = ranks.size();
    const LayerWire w = ranks[0].wire(layer);
    std::vector<std::uint8_t> gathered(p * w.bytes());
    for (std::size_t r = 0; r < p; ++r) {
      ranks[r].set_step(step);
      std::vector<float> g = grads[r];
      ranks[r].encode(layer, TensorView::of(std::span<float>(g)),
                      TensorView(gathered.data() + r * w.bytes(), w.count, DType::kUInt8));
    }
    std::vector<std::vector<float>> outs(p, std::vector<float>(grads[0].size()));
    for (std::size_t r = 0; r < p; ++r) {
      ranks[r].decode(layer, TensorView(gathered.data(), gathered.size(), DType::kUInt8),
                      TensorView::of(std::span<float>(outs[r])));
    }
    return outs;
  }
};

// (min, unit) of bucket b of a single payload.
std::pair<float, float> bucket_meta(const std::vector<std::uint8_t>& payload, std::size_t b) {
  float pair[2];
  std::memcpy(pair, payload.data() + quant::meta_offset() + 8 * b, sizeof pair);
  return {pair[0], pair[1]};
}

std::vector<std::uint8_t> encode_once(QuantizeCompressor& c, std::size_t layer, std::vector<float> g) {
  const LayerWire w = c.wire(layer);
  std::vector<std::uint8_t> payload(w.bytes(), 0xee);
  c.encode(layer, TensorView::of(std::span<float>(g)), TensorView(payload.data(), w.count, DType::kUInt8));
  return payload;
}

std::vector<float> decode_one(QuantizeCompressor& c, std::size_t layer, std::vector<std::uint8_t> payload,
                              std::size_t n) {
  std::vector<float> out(n);
  c.decode(layer, TensorView(payload.data(), payload.size(), DType::kUInt8),
           TensorView::of(std::span<float>(out)));
  return out;
}

float ulp(float x) {
  x = std::fabs(x);
  return std::nextafter(x, std::numeric_limits<float>::infinity()) - x;
}

// Lengths that are not multiples of the bucket or of 8, and tiny ones.
const std::size_t kLengths[] = {1, 5, 8, 9, 63, 64, 65, 511, 512, 513, 1031, 2048 + 3};

TEST(Quantize, PayloadSizes) {
  EXPECT_EQ(quantize_payload_bytes(0, 4, 512), 8u);
  EXPECT_EQ(quantize_payload_bytes(1, 4, 512), 8u + 8u + 8u);      // one group of 4 bytes, padded
  EXPECT_EQ(quantize_payload_bytes(512, 4, 512), 8u + 8u + 256u);
  EXPECT_EQ(quantize_payload_bytes(513, 3, 512), 8u + 16u + 200u);  // 65 groups * 3 = 195 -> 200
  EXPECT_EQ(quantize_payload_bytes(1000, 8, 512), 8u + 16u + 1000u);
  EXPECT_THROW(quantize_payload_bytes(10, 0, 512), Error);
  EXPECT_THROW(quantize_payload_bytes(10, 9, 512), Error);
}

TEST(Quantize, RejectsBadSettings) {
  EXPECT_THROW(QuantizeCompressor({.bits = 0}), Error);
  EXPECT_THROW(QuantizeCompressor({.bits = 9}), Error);
  EXPECT_THROW(QuantizeCompressor({.bits = 4, .bucket_size = 12}), Error);
  EXPECT_THROW(QuantizeCompressor({.bits = 4, .bucket_size = 0}), Error);
  EXPECT_THROW(QuantizeCompressor({.bits = 4, .bucket_size = (1u << 20) + 8}), Error);
  EXPECT_THROW(QuantizeCompressor({.bits = 4, .max_bits = 3}), Error);
  EXPECT_THROW(QuantizeCompressor({.bits = 4, .max_bits = 9}), Error);
  EXPECT_THROW(parse_rounding("up"), Error);
  EXPECT_EQ(parse_rounding("stochastic"), Rounding::kStochastic);
  QuantizeCompressor c({.bits = 4});
  std::vector<LayerSpec> layers = {matrix_layer(100), LayerSpec{"bias", 10, 1, false}};
  c.setup(layers, 2, 1);
  EXPECT_THROW(c.set_layer_bits(0, 5), Error);  // over max_bits (defaults to bits)
  EXPECT_THROW(c.set_layer_bits(1, 4), Error);  // a dense layer has no bit width
  EXPECT_THROW(c.set_layer_bits(2, 4), Error);  // no such layer
  EXPECT_THROW(c.wire(7), Error);
}

// Nearest rounding: every element within unit/2 of its value (plus the rounding of the
// float arithmetic: (x - min) * (1/unit) carries ~3 ulp relative error in units, and
// min + q*unit one ulp of the bucket's magnitude), for all bit widths and odd lengths.
TEST(Quantize, NearestRoundTripWithinHalfUnit) {
  for (const std::size_t bucket : {std::size_t{64}, std::size_t{512}}) {
    for (int bits = 1; bits <= 8; ++bits) {
      for (const std::size_t n : kLengths) {
        QuantizeCompressor c({.bits = bits, .bucket_size = bucket, .error_feedback = false});
        std::vector<LayerSpec> layers = {matrix_layer(n)};
        c.setup(layers, 1, 0);
        const std::vector<float> x = gaussian_values(n, static_cast<unsigned>(n * 10 + bits), 3.0f);
        const auto payload = encode_once(c, 0, x);
        ASSERT_EQ(payload.size(), quantize_payload_bytes(n, bits, bucket));
        const std::vector<float> y = decode_one(c, 0, payload, n);
        for (std::size_t i = 0; i < n; ++i) {
          const auto [min, unit] = bucket_meta(payload, i / bucket);
          const float top = min + static_cast<float>((1 << bits) - 1) * unit;
          const float bound = unit * (0.5f + 1e-4f) + 2 * ulp(std::max(std::fabs(min), std::fabs(top)));
          ASSERT_LE(std::fabs(x[i] - y[i]), bound)
              << "bits " << bits << " n " << n << " bucket " << bucket << " i " << i;
          ASSERT_GE(x[i], min);
          // top = min + L*unit with unit rounded to float: within L/2 ulp(unit) of max.
          ASSERT_LE(x[i], top + 1e-4f * unit + 2 * ulp(top));
        }
      }
    }
  }
}

// Stochastic rounding is unbiased: over K independent draws (steps) the mean of the
// dequantized value approaches x. One draw has variance unit^2 f(1-f) <= unit^2/4, so the
// mean of K draws has standard deviation <= unit / (2 sqrt(K)); we allow 5 of those.
// Nearest-style or floor rounding would miss by up to unit/2 and fail this bound.
TEST(Quantize, StochasticRoundingIsUnbiased) {
  constexpr int kDraws = 4000;
  for (const int bits : {1, 2, 4}) {
    const std::size_t n = 300;
    QuantizeCompressor c({.bits = bits, .bucket_size = 64, .rounding = Rounding::kStochastic,
                          .error_feedback = false, .seed = 7});
    std::vector<LayerSpec> layers = {matrix_layer(n)};
    c.setup(layers, 1, 0);
    const std::vector<float> x = gaussian_values(n, 99u + bits);
    std::vector<double> mean(n, 0.0);
    std::vector<float> units(quant::num_buckets(n, 64));
    for (int k = 0; k < kDraws; ++k) {
      c.set_step(k);
      const auto payload = encode_once(c, 0, x);
      for (std::size_t b = 0; b < units.size(); ++b) units[b] = bucket_meta(payload, b).second;
      const std::vector<float> y = decode_one(c, 0, payload, n);
      for (std::size_t i = 0; i < n; ++i) mean[i] += y[i];
    }
    double worst = 0;
    for (std::size_t i = 0; i < n; ++i) {
      mean[i] /= kDraws;
      const double tolerance = 5.0 * units[i / 64] / (2.0 * std::sqrt(double{kDraws}));
      ASSERT_LE(std::fabs(mean[i] - x[i]), tolerance) << "bits " << bits << " i " << i;
      worst = std::max(worst, std::fabs(mean[i] - x[i]) / units[i / 64]);
    }
    EXPECT_GT(worst, 0.0);  // the draws do vary
  }
}

TEST(Quantize, StochasticIsAPureFunctionOfSeedRankLayerStep) {
  const std::size_t n = 1000;
  std::vector<LayerSpec> layers = {matrix_layer(n), matrix_layer(n, "w2")};
  const QuantizeOptions options{.bits = 3, .rounding = Rounding::kStochastic, .error_feedback = false,
                                .seed = 11};
  QuantizeCompressor a(options), b(options), other_rank(options);
  a.setup(layers, 2, 0);
  b.setup(layers, 2, 0);
  other_rank.setup(layers, 2, 1);
  const std::vector<float> x = gaussian_values(n, 5);
  a.set_step(3);
  b.set_step(3);
  other_rank.set_step(3);
  EXPECT_EQ(encode_once(a, 0, x), encode_once(b, 0, x));
  EXPECT_NE(encode_once(a, 0, x), encode_once(a, 1, x));           // another layer
  EXPECT_NE(encode_once(a, 0, x), encode_once(other_rank, 0, x));  // another rank
  b.set_step(4);
  EXPECT_NE(encode_once(a, 0, x), encode_once(b, 0, x));           // another step
}

// Error feedback loses nothing: what was sent plus the new residual equals the gradient
// plus the old residual, at every step, to fp32 rounding (one subtraction).
TEST(Quantize, ErrorFeedbackLosesNothing) {
  for (const Rounding rounding : {Rounding::kNearest, Rounding::kStochastic}) {
    for (const int bits : {1, 2, 5, 8}) {
      const std::size_t n = 1031;
      QuantizeCompressor c({.bits = bits, .bucket_size = 128, .rounding = rounding});
      std::vector<LayerSpec> layers = {matrix_layer(n)};
      c.setup(layers, 1, 0);
      for (int step = 0; step < 5; ++step) {
        c.set_step(step);
        const std::vector<float> g = gaussian_values(n, 1000u * bits + step);
        const std::vector<float> before(c.residual(0).begin(), c.residual(0).end());
        const auto payload = encode_once(c, 0, g);
        const std::vector<float> sent = decode_one(c, 0, payload, n);
        for (std::size_t i = 0; i < n; ++i) {
          const float x = g[i] + before[i];
          const float back = sent[i] + c.residual(0)[i];
          ASSERT_LE(std::fabs(back - x), 2 * ulp(std::max(std::fabs(x), std::fabs(sent[i]))))
              << "bits " << bits << " step " << step << " i " << i;
        }
      }
      // The residual is bounded by the quantization error, it does not grow.
      for (const float r : c.residual(0)) ASSERT_TRUE(std::isfinite(r));
    }
  }
}

// Ranks simulated in one process: every rank decodes bitwise the same average, equal to the
// sum of each rank's dequantized payload in rank order divided by p.
TEST(Quantize, AllRanksDecodeTheSameAverage) {
  for (const int p : {1, 2, 3, 4}) {
    for (const std::size_t n : {std::size_t{9}, std::size_t{1031}}) {
      std::vector<LayerSpec> layers = {matrix_layer(n)};
      const QuantizeOptions options{.bits = 3, .bucket_size = 64, .rounding = Rounding::kStochastic};
      Ranks sim(p, options, layers);
      std::vector<std::vector<float>> grads;
      for (int r = 0; r < p; ++r) grads.push_back(gaussian_values(n, 77u + r, 1.0f + r));
      // What each rank sent, from a single-rank decoder of its own payload.
      std::vector<std::vector<float>> sent;
      for (int r = 0; r < p; ++r) {
        QuantizeCompressor alone(options);
        alone.setup(layers, p, r);
        alone.set_step(0);
        const auto payload = encode_once(alone, 0, grads[r]);
        QuantizeCompressor one(options);
        one.setup(layers, 1, 0);
        sent.push_back(decode_one(one, 0, payload, n));
      }
      const auto outs = sim.step(0, grads);
      for (int r = 1; r < p; ++r) {
        ASSERT_EQ(std::memcmp(outs[0].data(), outs[r].data(), n * sizeof(float)), 0) << "rank " << r;
      }
      for (std::size_t i = 0; i < n; ++i) {
        float sum = sent[0][i];
        for (int r = 1; r < p; ++r) sum += sent[r][i];
        ASSERT_EQ(outs[0][i], sum * (1.0f / static_cast<float>(p))) << "p " << p << " i " << i;
      }
    }
  }
}

TEST(Quantize, ConstantBucketsAndZeroLengthAreExact) {
  const std::size_t n = 100;
  QuantizeCompressor c({.bits = 2, .bucket_size = 64, .error_feedback = false});
  std::vector<LayerSpec> layers = {matrix_layer(n), matrix_layer(0, "empty")};
  c.setup(layers, 1, 0);
  std::vector<float> x(n, -0.375f);
  EXPECT_EQ(decode_one(c, 0, encode_once(c, 0, x), n), x);
  const auto empty = encode_once(c, 1, {});
  EXPECT_EQ(empty.size(), 8u);
  EXPECT_TRUE(decode_one(c, 1, empty, 0).empty());
}

// A bucket whose range overflows float is not sent: its values stay in the residual
// (nothing lost) and the payload still passes validation.
TEST(Quantize, OverflowingRangeStaysInTheResidual) {
  const std::size_t n = 16;
  QuantizeCompressor c({.bits = 1, .bucket_size = 8});
  std::vector<LayerSpec> layers = {matrix_layer(n)};
  c.setup(layers, 1, 0);
  std::vector<float> g(n, 1.0f);
  g[0] = -3e38f;
  g[1] = 3e38f;
  const auto y = decode_one(c, 0, encode_once(c, 0, g), n);
  for (std::size_t i = 0; i < 8; ++i) {
    EXPECT_EQ(y[i], 0.0f);
    EXPECT_EQ(c.residual(0)[i], g[i]);
  }
  for (std::size_t i = 8; i < n; ++i) EXPECT_EQ(y[i], 1.0f);  // the other bucket is sent
}

TEST(Quantize, NonFiniteInputsCountAsZero) {
  const std::size_t n = 20;
  QuantizeCompressor c({.bits = 4, .bucket_size = 8});
  std::vector<LayerSpec> layers = {matrix_layer(n)};
  c.setup(layers, 1, 0);
  std::vector<float> g = gaussian_values(n, 3);
  g[2] = std::nanf("");
  g[13] = -std::numeric_limits<float>::infinity();
  const LayerWire w = c.wire(0);
  std::vector<std::uint8_t> payload(w.bytes());
  const EncodeResult result = c.encode(0, TensorView::of(std::span<float>(g)),
                                       TensorView(payload.data(), w.count, DType::kUInt8));
  EXPECT_EQ(result.nonfinite, 2u);
  const auto y = decode_one(c, 0, payload, n);
  for (std::size_t i = 0; i < n; ++i) {
    ASSERT_TRUE(std::isfinite(y[i]) && std::isfinite(c.residual(0)[i])) << i;
  }
  EXPECT_EQ(y[2] + c.residual(0)[2], 0.0f);  // the NaN entered as 0
}

TEST(Quantize, DenseLayersAreAllreducedInFloat) {
  QuantizeCompressor c({.bits = 2});
  std::vector<LayerSpec> layers = {LayerSpec{"bias", 10, 1, false}, LayerSpec{"forced", 64, 2, true}};
  c.setup(layers, 4, 0);
  for (std::size_t l = 0; l < 2; ++l) {
    EXPECT_FALSE(c.is_quantized(l));
    EXPECT_EQ(c.wire(l).collective, Collective::kAllreduce);
    EXPECT_EQ(c.wire(l).dtype, DType::kFloat32);
    EXPECT_EQ(c.max_payload_bytes(l), layers[l].numel * 4);
  }
  std::vector<float> summed(10, 8.0f), out(10);
  c.decode(0, TensorView::of(std::span<float>(summed)), TensorView::of(std::span<float>(out)));
  EXPECT_EQ(out, std::vector<float>(10, 2.0f));
  QuantizeCompressor all({.bits = 2, .quantize_1d = true});
  all.setup(layers, 4, 0);
  EXPECT_TRUE(all.is_quantized(0));
  EXPECT_FALSE(all.is_quantized(1));  // force_dense always wins
}

// Decoders validate before writing: every kind of corruption is refused with
// kCorruptPayload naming the rank, and `out` is left untouched.
TEST(Quantize, CorruptPayloadsAreRefused) {
  const std::size_t n = 77;
  const int p = 3;
  std::vector<LayerSpec> layers = {matrix_layer(n)};
  const QuantizeOptions options{.bits = 3, .bucket_size = 32};
  QuantizeCompressor c(options);
  c.setup(layers, p, 0);
  const LayerWire w = c.wire(0);
  std::vector<std::uint8_t> good;
  for (int r = 0; r < p; ++r) {
    const auto one = encode_once(c, 0, gaussian_values(n, 40u + r));
    good.insert(good.end(), one.begin(), one.end());
  }
  std::vector<float> out(n, 123.0f);
  auto decode = [&](std::vector<std::uint8_t> bytes) {
    c.decode(0, TensorView(bytes.data(), bytes.size(), DType::kUInt8), TensorView::of(std::span<float>(out)));
  };
  EXPECT_NO_THROW(decode(good));
  auto expect_corrupt = [&](const std::vector<std::uint8_t>& bytes, const char* what) {
    std::fill(out.begin(), out.end(), 123.0f);
    try {
      decode(bytes);
      ADD_FAILURE() << what << ": no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kCorruptPayload) << what << ": " << e.what();
      EXPECT_NE(e.message().find("payload of rank 2"), std::string::npos) << e.what();
    }
    EXPECT_EQ(out, std::vector<float>(n, 123.0f)) << what << ": out was written";
  };
  const std::size_t rank2 = 2 * w.count;
  auto set_float = [](std::vector<std::uint8_t>& b, std::size_t at, float v) { std::memcpy(b.data() + at, &v, 4); };
  {
    auto bad = good;
    set_float(bad, rank2 + quant::meta_offset() + 8, std::nanf(""));  // bucket 1 min
    expect_corrupt(bad, "NaN min");
  }
  {
    auto bad = good;
    set_float(bad, rank2 + quant::meta_offset() + 4, std::numeric_limits<float>::infinity());
    expect_corrupt(bad, "Inf unit");
  }
  {
    auto bad = good;
    set_float(bad, rank2 + quant::meta_offset() + 4, -1.0f);
    expect_corrupt(bad, "negative unit");
  }
  {
    auto bad = good;
    set_float(bad, rank2 + quant::meta_offset(), 3e38f);
    set_float(bad, rank2 + quant::meta_offset() + 4, 1e38f);
    expect_corrupt(bad, "top level overflows");
  }
  {
    auto bad = good;
    bad[rank2 + 1] = 5;  // bits in the header
    expect_corrupt(bad, "header bits");
  }
  {
    auto bad = good;
    bad[rank2 + 4] ^= 1;  // numel in the header
    expect_corrupt(bad, "header numel");
  }
  {
    auto bad = good;
    bad[rank2 + w.count - 1] = 1;  // padding byte
    expect_corrupt(bad, "padding byte");
  }
  {
    // n = 77: the last group holds 5 elements; the code of element 79 (padding) is set.
    auto bad = good;
    const std::size_t last_group = rank2 + quant::codes_offset(n, 32) + (n / 8) * 3;
    bad[last_group + 2] |= 0x80;
    expect_corrupt(bad, "padding code");
  }
  std::vector<std::uint8_t> short_payload(good.begin(), good.end() - 8);
  EXPECT_THROW(decode(short_payload), Error);
}

TEST(Quantize, ChangingBitsKeepsTheResidual) {
  const std::size_t n = 600;
  QuantizeCompressor c({.bits = 2, .bucket_size = 64, .max_bits = 8});
  std::vector<LayerSpec> layers = {matrix_layer(n)};
  c.setup(layers, 1, 0);
  EXPECT_EQ(c.max_payload_bytes(0), quantize_payload_bytes(n, 8, 64));
  encode_once(c, 0, gaussian_values(n, 1));
  const std::vector<float> kept(c.residual(0).begin(), c.residual(0).end());
  c.set_layer_bits(0, 6);
  EXPECT_EQ(c.layer_bits(0), 6);
  EXPECT_EQ(std::vector<float>(c.residual(0).begin(), c.residual(0).end()), kept);
  EXPECT_EQ(c.wire(0).count, quantize_payload_bytes(n, 6, 64));
  const std::vector<float> g = gaussian_values(n, 2);
  const auto sent = decode_one(c, 0, encode_once(c, 0, g), n);
  for (std::size_t i = 0; i < n; ++i) {
    const float x = g[i] + kept[i];
    ASSERT_LE(std::fabs(sent[i] + c.residual(0)[i] - x), 2 * ulp(std::max(std::fabs(x), std::fabs(sent[i]))));
  }
}

TEST(Quantize, StateRoundTripsAndRejectsBadBlobs) {
  const std::size_t n = 300;
  std::vector<LayerSpec> layers = {matrix_layer(n), LayerSpec{"b", 5, 1, false}};
  const QuantizeOptions options{.bits = 3, .bucket_size = 64, .max_bits = 5};
  QuantizeCompressor a(options), b(options);
  a.setup(layers, 1, 0);
  b.setup(layers, 1, 0);
  a.set_step(9);
  encode_once(a, 0, gaussian_values(n, 4));
  a.set_layer_bits(0, 5);
  const auto blob = a.save_state();
  b.load_state(blob);
  EXPECT_EQ(b.layer_bits(0), 5);
  EXPECT_TRUE(std::equal(a.residual(0).begin(), a.residual(0).end(), b.residual(0).begin()));
  const std::vector<float> g = gaussian_values(n, 5);
  EXPECT_EQ(encode_once(a, 0, g), encode_once(b, 0, g));
  auto truncated = blob;
  truncated.pop_back();
  EXPECT_THROW(b.load_state(truncated), Error);
  auto extra = blob;
  extra.push_back(std::byte{0});
  EXPECT_THROW(b.load_state(extra), Error);
  QuantizeCompressor other(options);
  std::vector<LayerSpec> other_layers = {matrix_layer(n + 1), LayerSpec{"b", 5, 1, false}};
  other.setup(other_layers, 1, 0);
  EXPECT_THROW(other.load_state(blob), Error);
}

// The profiling error of L-GreCo: for nearest rounding it is exactly the error of what
// the encoder sends; for stochastic rounding its expectation matches the mean over draws.
TEST(QuantizeKernels, SquaredErrorMatchesTheEncoder) {
  const std::size_t n = 1031, bucket = 128;
  const std::vector<float> x = gaussian_values(n, 21, 2.0f);
  std::vector<float> mins(quant::num_buckets(n, bucket)), maxs(mins.size());
  kernels::bucket_min_max(x.data(), n, bucket, mins.data(), maxs.data());
  for (int bits = 1; bits <= 8; ++bits) {
    QuantizeCompressor c({.bits = bits, .bucket_size = bucket, .error_feedback = false});
    std::vector<LayerSpec> layers = {matrix_layer(n)};
    c.setup(layers, 1, 0);
    const auto y = decode_one(c, 0, encode_once(c, 0, x), n);
    double exact = 0;
    for (std::size_t i = 0; i < n; ++i) exact += double(x[i] - y[i]) * double(x[i] - y[i]);
    const double predicted = kernels::quantize_squared_error(x.data(), n, bucket, bits, false, mins.data(), maxs.data());
    EXPECT_NEAR(predicted, exact, 1e-4 * exact) << "bits " << bits;

    QuantizeCompressor s({.bits = bits, .bucket_size = bucket, .rounding = Rounding::kStochastic,
                          .error_feedback = false});
    s.setup(layers, 1, 0);
    double mean = 0;
    constexpr int kDraws = 200;
    for (int k = 0; k < kDraws; ++k) {
      s.set_step(k);
      const auto z = decode_one(s, 0, encode_once(s, 0, x), n);
      for (std::size_t i = 0; i < n; ++i) mean += double(x[i] - z[i]) * double(x[i] - z[i]);
    }
    mean /= kDraws;
    const double expected = kernels::quantize_squared_error(x.data(), n, bucket, bits, true, mins.data(), maxs.data());
    // Squared error summed over 1031 elements, 200 draws: the relative spread is ~1%.
    EXPECT_NEAR(mean, expected, 0.05 * expected) << "bits " << bits;
  }
}

}  // namespace
}  // namespace gradcomm

namespace gradcomm {
namespace {

// The AVX2 build of the hot loops must give bitwise the baseline's payload, residual and
// decoded sum (same IEEE operations, no FMA), or ranks on different CPUs would diverge.
TEST(QuantizeKernels, Avx2AndBaselineAgreeBitwise) {
#if GRADCOMM_QUANT_HAVE_AVX2
  if (!kernels::use_avx2()) GTEST_SKIP() << "this CPU has no AVX2";
  for (int bits = 1; bits <= 8; ++bits) {
    for (const bool stochastic : {false, true}) {
      for (const std::size_t n : {std::size_t{13}, std::size_t{4099}}) {
        kernels::QuantizeParams params;
        params.bits = bits;
        params.bucket = 64;
        params.stochastic = stochastic;
        params.rng_key = quant::rng_key(3, 1, 2, bits);
        const std::vector<float> g = gaussian_values(n, 500u + bits, 2.0f);
        std::vector<float> r1 = gaussian_values(n, 600u + bits, 0.1f), r2 = r1;
        const std::size_t bytes = quant::payload_bytes(n, bits, 64);
        std::vector<std::uint8_t> p1(bytes), p2(bytes);
        std::vector<float> ws(2 * 64);
        kernels::baseline::quantize(g.data(), r1.data(), n, params, p1.data(), ws.data());
        kernels::avx2::quantize(g.data(), r2.data(), n, params, p2.data(), ws.data());
        ASSERT_EQ(p1, p2) << "bits " << bits << " stochastic " << stochastic << " n " << n;
        ASSERT_EQ(std::memcmp(r1.data(), r2.data(), n * sizeof(float)), 0);
        std::vector<std::uint8_t> two(p1);
        two.insert(two.end(), p2.begin(), p2.end());
        std::vector<float> o1(n), o2(n);
        kernels::baseline::dequantize(two.data(), bytes, 2, n, bits, 64, 0.5f, o1.data(), ws.data());
        kernels::avx2::dequantize(two.data(), bytes, 2, n, bits, 64, 0.5f, o2.data(), ws.data());
        ASSERT_EQ(std::memcmp(o1.data(), o2.data(), n * sizeof(float)), 0);
      }
    }
  }
#else
  GTEST_SKIP() << "no AVX2 build on this platform";
#endif
}

// A finite gradient plus a finite residual that overflows is zeroed and counted, so the
// residual never holds an Inf.
TEST(QuantizeKernels, OverflowingSumIsCountedAndZeroed) {
  const std::size_t n = 16;
  std::vector<float> g(n, 1.0f), r(n, 0.0f);
  g[3] = 3e38f;
  r[3] = 3e38f;
  std::vector<std::uint8_t> payload(quant::payload_bytes(n, 4, 8));
  std::vector<float> ws(16);
  kernels::QuantizeParams params;
  params.bucket = 8;
  EXPECT_EQ(kernels::quantize_error_feedback(g.data(), r.data(), n, params, payload.data(), ws.data()), 1u);
  for (const float x : r) EXPECT_TRUE(std::isfinite(x));
  const char* why = "";
  EXPECT_EQ(kernels::find_corrupt_payload(payload.data(), payload.size(), 1, n, 4, 8, &why), -1) << why;
}

}  // namespace
}  // namespace gradcomm
