// DgcCompressor and its CPU kernels in one process. Several ranks are simulated by several
// compressors whose payloads are concatenated in rank order, as the allgather would.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "core/float16.h"
#include "gaussian_values.h"
#include "gradcomm/dgc.h"
#include "kernels/cpu/dgc_kernels.h"
#include "unit/dgc_reference.h"

namespace gradcomm {
namespace {

using gradcomm::testing::reference_topk;

using testing::gaussian_values;

struct Parsed {
  std::uint32_t count = 0;
  std::vector<std::uint32_t> indices;  // all k slots
  std::vector<float> values;           // all k slots
};

Parsed parse(const std::vector<std::byte>& payload, std::size_t k, bool half) {
  Parsed p;
  std::memcpy(&p.count, payload.data(), 4);
  p.indices.resize(k);
  p.values.resize(k);
  std::memcpy(p.indices.data(), payload.data() + 4, 4 * k);
  const std::byte* vals = payload.data() + 4 + 4 * k;
  for (std::size_t j = 0; j < k; ++j) {
    if (half) {
      std::uint16_t h;
      std::memcpy(&h, vals + 2 * j, 2);
      p.values[j] = half_to_float(h);
    } else {
      std::memcpy(&p.values[j], vals + 4 * j, 4);
    }
  }
  return p;
}

DgcOptions no_warmup(double density, DgcSelection selection = DgcSelection::kExact) {
  DgcOptions o;
  o.density = density;
  o.warmup_densities = {};
  o.selection = selection;
  return o;
}

// One simulated rank: a compressor over `layers`, and a payload buffer for `layer`.
struct Rank {
  DgcCompressor c;
  std::vector<std::byte> payload;
  Rank(const DgcOptions& o, const std::vector<LayerSpec>& layers, int p, int r) : c(o) {
    c.setup(layers, p, r);
  }
  EncodeResult encode(std::size_t layer, std::vector<float>& g) {
    const LayerWire w = c.wire(layer);
    payload.assign(w.bytes(), std::byte{0xab});
    return c.encode(layer, TensorView::of(std::span<float>(g)),
                    TensorView(payload.data(), w.count, w.dtype));
  }
};

TEST(DgcOptions, RejectsBadSettingsAtConstruction) {
  auto rejects = [](auto mutate) {
    DgcOptions o;
    mutate(o);
    try {
      DgcCompressor c(o);
      return false;
    } catch (const Error& e) {
      return e.code() == ErrorCode::kInvalidArgument;
    }
  };
  EXPECT_TRUE(rejects([](DgcOptions& o) { o.density = 0.0; }));
  EXPECT_TRUE(rejects([](DgcOptions& o) { o.density = -0.1; }));
  EXPECT_TRUE(rejects([](DgcOptions& o) { o.density = 1.5; }));
  EXPECT_TRUE(rejects([](DgcOptions& o) { o.density = std::nan(""); }));
  EXPECT_TRUE(rejects([](DgcOptions& o) { o.warmup_densities = {0.25, 0.0}; }));
  EXPECT_TRUE(rejects([](DgcOptions& o) { o.steps_per_epoch = -1; }));
  EXPECT_TRUE(rejects([](DgcOptions& o) { o.momentum = 1.0f; }));
  EXPECT_TRUE(rejects([](DgcOptions& o) { o.momentum = -0.5f; }));
  EXPECT_TRUE(rejects([](DgcOptions& o) { o.clip_norm = -1.0f; }));
  EXPECT_TRUE(rejects([](DgcOptions& o) { o.sample_fraction = 0.0; }));
  EXPECT_TRUE(rejects([](DgcOptions& o) { o.sample_fraction = 2.0; }));
  EXPECT_TRUE(rejects([](DgcOptions& o) { o.value_dtype = DType::kInt32; }));
  EXPECT_TRUE(rejects([](DgcOptions& o) { o.dense_dtype = DType::kUInt8; }));
  EXPECT_FALSE(rejects([](DgcOptions& o) { o.density = 1.0; }));
  EXPECT_THROW(DgcSgd(DgcSgdOptions{-1.0f, 0.0f}), Error);
  EXPECT_THROW(DgcSgd(DgcSgdOptions{0.1f, -1.0f}), Error);
}

TEST(DgcSchedule, WarmupByEpochAndByStep) {
  DgcOptions o;
  o.density = 0.001;
  DgcCompressor by_epoch(o);
  by_epoch.setup(std::vector<LayerSpec>{{"w", 100000, 2, false}}, 4, 0);
  const double expected[] = {0.25, 0.0625, 0.015625, 0.004, 0.001, 0.001};
  for (int e = 0; e < 6; ++e) {
    by_epoch.set_epoch(e);
    by_epoch.set_step(1000 * e);  // the Exchanger's step must not move an epoch schedule
    EXPECT_DOUBLE_EQ(by_epoch.density(), expected[e]) << "epoch " << e;
    EXPECT_EQ(by_epoch.k(0), static_cast<std::size_t>(std::ceil(expected[e] * 100000)));
  }
  EXPECT_THROW(by_epoch.set_epoch(-1), Error);

  o.steps_per_epoch = 10;
  DgcCompressor by_step(o);
  by_step.setup(std::vector<LayerSpec>{{"w", 100000, 2, false}}, 4, 0);
  by_step.set_step(9);
  EXPECT_DOUBLE_EQ(by_step.density(), 0.25);
  by_step.set_step(10);
  EXPECT_DOUBLE_EQ(by_step.density(), 0.0625);
  by_step.set_step(45);
  EXPECT_DOUBLE_EQ(by_step.density(), 0.001);
  EXPECT_THROW(by_step.set_epoch(1), Error);
}

// A warm-up never sends less than what follows it: epochs whose warm-up density is at or
// below the target run at the target (each layer's own, once set), wherever they are in
// the schedule, and dgc_warmup_epochs() ends after the last epoch above it.
TEST(DgcSchedule, WarmupAtOrBelowTheTargetRunsAtTheTarget) {
  DgcOptions o;
  o.density = 0.01;  // above the paper's last warm-up density, 0.004
  DgcCompressor paper(o);
  paper.setup(std::vector<LayerSpec>{{"w", 100000, 2, false}}, 4, 0);
  const double expected[] = {0.25, 0.0625, 0.015625, 0.01, 0.01};
  for (int e = 0; e < 5; ++e) {
    paper.set_epoch(e);
    EXPECT_DOUBLE_EQ(paper.density(), expected[e]) << "epoch " << e;
    EXPECT_EQ(paper.k(0), static_cast<std::size_t>(std::ceil(expected[e] * 100000))) << "epoch " << e;
  }
  EXPECT_EQ(dgc_warmup_epochs(o), 3u);
  o.density = 0.004;  // equal to the last warm-up density: that epoch is the target's
  EXPECT_EQ(dgc_warmup_epochs(o), 3u);
  o.density = 0.001;
  EXPECT_EQ(dgc_warmup_epochs(o), 4u);
  o.density = 0.5;
  EXPECT_EQ(dgc_warmup_epochs(o), 0u);
  o.warmup_densities = {};
  EXPECT_EQ(dgc_warmup_epochs(o), 0u);

  o.density = 0.01;  // a schedule that dips below the target and rises again
  o.warmup_densities = {0.25, 0.001, 0.0625};
  o.max_layer_density = 0.05;
  DgcCompressor dips(o);
  dips.setup(std::vector<LayerSpec>{{"w", 1000, 2, false}, {"v", 1000, 2, false}}, 2, 0);
  dips.set_layer_density(1, 0.05);
  const double layer0[] = {0.25, 0.01, 0.0625, 0.01}, layer1[] = {0.25, 0.05, 0.0625, 0.05};
  for (int e = 0; e < 4; ++e) {
    dips.set_epoch(e);
    EXPECT_DOUBLE_EQ(dips.layer_density(0), layer0[e]) << "epoch " << e;
    EXPECT_DOUBLE_EQ(dips.layer_density(1), layer1[e]) << "epoch " << e;
  }
  EXPECT_EQ(dgc_warmup_epochs(o), 3u);
}

TEST(DgcWire, DenseForOneDimAndWhenGatherCostsMore) {
  DgcOptions o = no_warmup(0.3);
  std::vector<LayerSpec> layers = {
      {"w", 1000, 2, false}, {"b", 10, 1, false}, {"f", 1000, 2, true}, {"e", 0, 2, false}};
  DgcCompressor c2(o);
  c2.setup(layers, 2, 0);
  EXPECT_EQ(c2.wire(0).collective, Collective::kAllgather);  // k/n = 0.3 <= 1/2
  EXPECT_EQ(c2.wire(0).bytes(), (4 + 300 * 8u + 7) / 8 * 8);
  EXPECT_EQ(c2.wire(1).collective, Collective::kAllreduce);
  EXPECT_EQ(c2.wire(1).count, 10u);
  EXPECT_EQ(c2.wire(2).collective, Collective::kAllreduce);
  EXPECT_EQ(c2.wire(3).collective, Collective::kAllreduce);
  EXPECT_EQ(c2.wire(3).count, 0u);
  DgcCompressor c4(o);
  c4.setup(layers, 4, 0);
  EXPECT_EQ(c4.wire(0).collective, Collective::kAllreduce);  // k/n = 0.3 > 1/4
  o.dense_fallback = false;
  DgcCompressor forced(o);
  forced.setup(layers, 4, 0);
  EXPECT_EQ(forced.wire(0).collective, Collective::kAllgather);
  // The workspace bound covers every density of the schedule.
  DgcOptions w;
  w.density = 0.001;
  DgcCompressor warm(w);
  warm.setup(layers, 2, 0);
  EXPECT_GE(warm.max_payload_bytes(0), 4 + 250 * 8u);
  o.value_dtype = DType::kFloat16;
  DgcCompressor half(o);
  half.setup(layers, 2, 0);
  EXPECT_EQ(half.wire(0).bytes(), (4 + 300 * 6u + 7) / 8 * 8);
}

// Per-layer densities (L-GreCo's plans): bounded by max_layer_density, covered by the
// payload bound, in force after warm-up only, and u and v stay as they were.
TEST(DgcWire, LayerDensityIsBoundedAndFollowsWarmup) {
  DgcOptions o;
  o.density = 0.01;
  o.warmup_densities = {0.25};
  o.steps_per_epoch = 1;
  o.max_layer_density = 0.05;
  o.dense_fallback = false;
  const std::vector<LayerSpec> layers = {{"w", 1000, 2, false}, {"v", 2000, 2, false}};
  DgcCompressor c(o);
  c.setup(layers, 2, 0);
  EXPECT_DOUBLE_EQ(c.layer_density(0), 0.25);  // warm-up: every layer follows the schedule
  c.set_layer_density(1, 0.05);
  EXPECT_DOUBLE_EQ(c.layer_density(1), 0.25);
  c.set_step(1);  // warm-up over
  EXPECT_DOUBLE_EQ(c.layer_density(0), 0.01);
  EXPECT_DOUBLE_EQ(c.layer_density(1), 0.05);
  EXPECT_EQ(c.k(1), 100u);
  EXPECT_EQ(c.wire(1).bytes(), c.payload_bytes_at(1, 0.05));
  EXPECT_GE(c.max_payload_bytes(1), c.payload_bytes_at(1, 0.05));
  EXPECT_GE(c.max_payload_bytes(0), c.payload_bytes_at(0, 0.25));

  std::vector<float> g(2000);
  for (std::size_t i = 0; i < g.size(); ++i) g[i] = std::sin(0.37f * static_cast<float>(i));
  std::vector<std::uint8_t> payload(c.wire(1).bytes());
  c.encode(1, TensorView::of(std::span<float>(g)), TensorView(payload.data(), payload.size(), DType::kUInt8));
  const std::vector<float> u(c.momentum(1).begin(), c.momentum(1).end());
  const std::vector<float> v(c.residual(1).begin(), c.residual(1).end());
  c.set_layer_density(1, 0.001);
  EXPECT_EQ(std::vector<float>(c.momentum(1).begin(), c.momentum(1).end()), u);
  EXPECT_EQ(std::vector<float>(c.residual(1).begin(), c.residual(1).end()), v);
  EXPECT_EQ(c.k(1), 2u);

  EXPECT_THROW(c.set_layer_density(0, 0.06), Error);  // over max_layer_density
  EXPECT_THROW(c.set_layer_density(0, 0.0), Error);
  EXPECT_THROW(c.set_layer_density(2, 0.01), Error);  // no such layer
  o.max_layer_density = 0.005;                        // below density
  EXPECT_THROW(DgcCompressor{o}, Error);
  o.max_layer_density = 0;
  DgcCompressor plain(o);
  plain.setup(layers, 2, 0);
  EXPECT_THROW(plain.set_layer_density(0, 0.02), Error);  // 0: at most density
  plain.set_layer_density(0, 0.005);
}

TEST(DgcEncode, ExactSelectionMatchesReferenceAndLosesNothing) {
  const std::size_t n = 4099;  // prime: no chunk or block boundary lines up
  for (bool nesterov : {false, true}) {
    for (DType values : {DType::kFloat32, DType::kFloat16}) {
      DgcOptions o = no_warmup(0.01);
      o.nesterov = nesterov;
      o.value_dtype = values;
      Rank r(o, {{"w", n, 2, false}}, 1, 0);
      const std::size_t k = r.c.k(0);
      ASSERT_EQ(k, 41u);
      std::vector<float> u(n, 0.0f), v(n, 0.0f);
      for (int step = 0; step < 5; ++step) {
        std::vector<float> g = gaussian_values(n, 100 + step);
        if (step == 2) std::fill(g.begin() + 7, g.begin() + 60, 0.5f);  // ties
        std::vector<float> before_v = v;
        for (std::size_t i = 0; i < n; ++i) {
          if (nesterov) {
            u[i] = 0.9f * (u[i] + g[i]);
            v[i] = v[i] + u[i] + g[i];
          } else {
            u[i] = 0.9f * u[i] + g[i];
            v[i] = v[i] + u[i];
          }
        }
        std::vector<float> accumulated = v;
        ASSERT_EQ(r.encode(0, g).nonfinite, 0u);
        const Parsed p = parse(r.payload, k, values == DType::kFloat16);
        const std::vector<std::uint32_t> expect = reference_topk(accumulated, k);
        ASSERT_EQ(p.count, expect.size());
        ASSERT_EQ(std::vector<std::uint32_t>(p.indices.begin(), p.indices.begin() + p.count),
                  expect)
            << "step " << step;
        for (std::size_t j = p.count; j < k; ++j) EXPECT_EQ(p.indices[j], kernels::dgc::kSentinel);
        // Nothing lost: sent + residual == accumulated, per element.
        std::vector<float> sent(n, 0.0f);
        for (std::size_t j = 0; j < p.count; ++j) sent[p.indices[j]] = p.values[j];
        const auto residual = r.c.residual(0);
        const auto momentum = r.c.momentum(0);
        for (std::size_t i = 0; i < n; ++i) {
          ASSERT_NEAR(sent[i] + residual[i], accumulated[i],
                      1e-6f * std::fabs(accumulated[i]) + 1e-7f)
              << "element " << i << " step " << step;
          // Mirror the compressor in the reference: masking zeroes u at sent indices.
          v[i] = residual[i];
          if (std::binary_search(expect.begin(), expect.end(), static_cast<std::uint32_t>(i)))
            u[i] = 0.0f;
          ASSERT_EQ(momentum[i], u[i]) << "momentum " << i;
        }
        (void)before_v;
      }
    }
  }
}

TEST(DgcEncode, SampledSelectionKeepsLargestAndBoundsCount) {
  const std::size_t n = 200000;
  DgcOptions o = no_warmup(0.001, DgcSelection::kSampled);
  o.momentum = 0.0f;
  Rank r(o, {{"w", n, 2, false}}, 1, 0);
  const std::size_t k = r.c.k(0);
  int fused = 0;  // steps whose candidates all came from the fused pass
  for (int step = 0; step < 8; ++step) {
    std::vector<float> g = gaussian_values(n, 7 + step);
    std::vector<float> accumulated(r.c.residual(0).begin(), r.c.residual(0).end());
    for (std::size_t i = 0; i < n; ++i) accumulated[i] += g[i];
    r.encode(0, g);
    const Parsed p = parse(r.payload, k, false);
    const DgcLayerStats& st = r.c.last_stats(0);
    EXPECT_GE(p.count, static_cast<std::uint32_t>(0.8 * static_cast<double>(k))) << "step " << step;
    EXPECT_LE(p.count, k);
    EXPECT_EQ(st.sent, p.count);
    // Every sent magnitude is at least every unsent one that passed the threshold: when
    // count reached k, the sent set is the exact top-k.
    if (st.candidates >= k) {
      EXPECT_EQ(std::vector<std::uint32_t>(p.indices.begin(), p.indices.end()),
                reference_topk(accumulated, k));
    }
    for (std::size_t j = 0; j < p.count; ++j) {
      EXPECT_GE(std::fabs(p.values[j]), st.threshold);
    }
    fused += st.rounds == 1;
  }
  EXPECT_EQ(r.c.last_stats(0).k, k);
  EXPECT_GE(fused, 1) << "the threshold cache never spared the second pass";
}

TEST(DgcEncode, NothingAboveThresholdAndNonFinite) {
  const std::size_t n = 1000;
  Rank r(no_warmup(0.01, DgcSelection::kSampled), {{"w", n, 2, false}}, 1, 0);
  std::vector<float> g(n, 0.0f);
  EXPECT_EQ(r.encode(0, g).nonfinite, 0u);
  Parsed p = parse(r.payload, r.c.k(0), false);
  EXPECT_EQ(p.count, 0u);
  for (std::uint32_t i : p.indices) EXPECT_EQ(i, kernels::dgc::kSentinel);
  for (float x : p.values) EXPECT_EQ(x, 0.0f);
  std::vector<float> out(n, 5.0f);
  r.c.decode(0, TensorView(r.payload.data(), r.payload.size(), DType::kUInt8),
             TensorView::of(std::span<float>(out)));
  for (float x : out) EXPECT_EQ(x, 0.0f);

  g[3] = std::numeric_limits<float>::quiet_NaN();
  g[4] = std::numeric_limits<float>::infinity();
  g[5] = 2.0f;
  EXPECT_EQ(r.encode(0, g).nonfinite, 2u);
  p = parse(r.payload, r.c.k(0), false);
  ASSERT_EQ(p.count, 1u);
  EXPECT_EQ(p.indices[0], 5u);
  for (float x : r.c.residual(0)) EXPECT_TRUE(std::isfinite(x));
  for (float x : r.c.momentum(0)) EXPECT_TRUE(std::isfinite(x));
}

TEST(DgcEncode, ClippingScalesToNormOverSqrtP) {
  const std::size_t n = 100;
  DgcOptions o = no_warmup(1.0);
  o.clip_norm = 1.0f;
  o.momentum = 0.0f;
  o.dense_fallback = false;
  Rank r(o, {{"w", n, 2, false}}, 4, 0);
  std::vector<float> g(n, 1.0f);  // norm 10, limit 1/sqrt(4) = 0.5
  r.encode(0, g);
  const Parsed p = parse(r.payload, n, false);
  ASSERT_EQ(p.count, n);
  for (float x : p.values) EXPECT_NEAR(x, 0.05f, 1e-7f);
}

TEST(DgcDecode, ScatterAddsRanksAndAverages) {
  const std::size_t n = 50;
  const int p = 3;
  std::vector<LayerSpec> layers = {{"w", n, 2, false}};
  DgcOptions o = no_warmup(0.1);
  o.momentum = 0.0f;
  std::vector<std::unique_ptr<Rank>> ranks;
  std::vector<std::byte> all;
  std::vector<float> expect(n, 0.0f);
  for (int r = 0; r < p; ++r) {
    ranks.push_back(std::make_unique<Rank>(o, layers, p, r));
    std::vector<float> g(n, 0.0f);
    for (std::size_t i = 0; i < 5; ++i)
      g[(r * 3 + i * 7) % n] = static_cast<float>(r + 1) * (i + 1);
    for (std::size_t i = 0; i < n; ++i) expect[i] += g[i] * (1.0f / p);
    ranks.back()->encode(0, g);
    all.insert(all.end(), ranks.back()->payload.begin(), ranks.back()->payload.end());
  }
  std::vector<float> out(n);
  ranks[1]->c.decode(0, TensorView(all.data(), all.size(), DType::kUInt8),
                     TensorView::of(std::span<float>(out)));
  for (std::size_t i = 0; i < n; ++i) EXPECT_FLOAT_EQ(out[i], expect[i]) << i;
}

TEST(DgcDecode, RejectsCorruptPayloadsWithoutWriting) {
  const std::size_t n = 64;
  const int p = 2;
  std::vector<LayerSpec> layers = {{"w", n, 2, false}};
  DgcOptions o = no_warmup(0.125);
  Rank a(o, layers, p, 0), b(o, layers, p, 1);
  std::vector<float> ga = gaussian_values(n, 1), gb = gaussian_values(n, 2);
  gb[10] = 0.0f;
  a.encode(0, ga);
  b.encode(0, gb);
  const std::size_t k = a.c.k(0);
  ASSERT_EQ(k, 8u);
  const std::size_t block = a.payload.size();
  std::vector<std::byte> good = a.payload;
  good.insert(good.end(), b.payload.begin(), b.payload.end());
  std::vector<float> out(n);
  auto decode = [&](std::vector<std::byte> bytes) {
    std::fill(out.begin(), out.end(), 7.0f);
    try {
      a.c.decode(0, TensorView(bytes.data(), bytes.size(), DType::kUInt8),
                 TensorView::of(std::span<float>(out)));
      return ErrorCode{};
    } catch (const Error& e) {
      for (float x : out) EXPECT_EQ(x, 7.0f) << "decode wrote before failing";
      return e.code();
    }
  };
  EXPECT_EQ(decode(good), ErrorCode{});
  auto put = [](std::vector<std::byte>& bytes, std::size_t at, std::uint32_t x) {
    std::memcpy(bytes.data() + at, &x, 4);
  };
  std::vector<std::byte> bad = good;
  put(bad, block + 4 + 4 * 2, static_cast<std::uint32_t>(n));  // index out of range (rank 1)
  EXPECT_EQ(decode(bad), ErrorCode::kCorruptPayload);
  bad = good;
  put(bad, block + 4 + 4 * 2, 0xfffffff0u);
  EXPECT_EQ(decode(bad), ErrorCode::kCorruptPayload);
  bad = good;
  put(bad, 0, static_cast<std::uint32_t>(k + 1));  // count over k
  EXPECT_EQ(decode(bad), ErrorCode::kCorruptPayload);
  bad = good;
  bad.resize(good.size() - 8);  // truncated
  EXPECT_EQ(decode(bad), ErrorCode::kCorruptPayload);
  bad = good;
  std::uint32_t first;
  std::memcpy(&first, bad.data() + 4, 4);
  put(bad, 4 + 4, first);  // a repeated index
  EXPECT_EQ(decode(bad), ErrorCode::kCorruptPayload);
  // A short count leaves a real index where the sentinel must be.
  bad = good;
  put(bad, 0, static_cast<std::uint32_t>(k - 1));
  EXPECT_EQ(decode(bad), ErrorCode::kCorruptPayload);
  EXPECT_EQ(decode(std::vector<std::byte>(3 * block)), ErrorCode::kCorruptPayload);
}

TEST(DgcDense, MomentumAfterTheAverage) {
  const std::size_t n = 7;
  for (bool nesterov : {false, true}) {
    DgcOptions o = no_warmup(0.01);
    o.nesterov = nesterov;
    o.momentum = 0.5f;
    Rank r(o, {{"b", n, 1, false}}, 2, 0);
    std::vector<float> u(n, 0.0f);
    for (int step = 0; step < 3; ++step) {
      std::vector<float> g(n);
      for (std::size_t i = 0; i < n; ++i) g[i] = static_cast<float>(i + step);
      r.encode(0, g);
      ASSERT_EQ(r.payload.size(), n * 4);
      std::vector<float> sum(n);
      std::memcpy(sum.data(), r.payload.data(), n * 4);
      for (float& x : sum) x *= 3.0f;  // as if the other rank sent twice as much
      std::vector<float> out(n);
      r.c.decode(0, TensorView::of(std::span<float>(sum)), TensorView::of(std::span<float>(out)));
      for (std::size_t i = 0; i < n; ++i) {
        const float avg = g[i] * 3.0f * 0.5f;
        float expect;
        if (nesterov) {
          u[i] = 0.5f * (u[i] + avg);
          expect = u[i] + avg;
        } else {
          u[i] = 0.5f * u[i] + avg;
          expect = u[i];
        }
        EXPECT_FLOAT_EQ(out[i], expect) << i;
      }
    }
  }
}

TEST(DgcState, SaveLoadContinuesBitwise) {
  std::vector<LayerSpec> layers = {{"w", 3000, 2, false}, {"b", 30, 1, false}};
  DgcOptions o;  // sampled, warm-up
  o.density = 0.01;
  DgcCompressor a(o);
  a.setup(layers, 1, 0);
  auto step = [&](DgcCompressor& c, int s, std::vector<std::byte>& payload0) {
    std::vector<float> g0 = gaussian_values(3000, 50 + s), g1 = gaussian_values(30, 90 + s);
    payload0.assign(c.wire(0).bytes(), std::byte{0});
    c.encode(0, TensorView::of(std::span<float>(g0)),
             TensorView(payload0.data(), c.wire(0).count, c.wire(0).dtype));
    std::vector<std::byte> p1(c.wire(1).bytes());
    c.encode(1, TensorView::of(std::span<float>(g1)),
             TensorView(p1.data(), c.wire(1).count, c.wire(1).dtype));
    std::vector<float> out(30);
    c.decode(1, TensorView(p1.data(), 30, DType::kFloat32), TensorView::of(std::span<float>(out)));
  };
  std::vector<std::byte> pa, pb;
  for (int s = 0; s < 3; ++s) {
    a.set_epoch(s);
    step(a, s, pa);
  }
  const std::vector<std::byte> blob = a.save_state();
  DgcCompressor b(o);
  b.setup(layers, 1, 0);
  b.load_state(blob);
  EXPECT_EQ(b.epoch(), 2);
  EXPECT_EQ(b.save_state(), blob);
  for (int s = 3; s < 6; ++s) {
    a.set_epoch(s);
    b.set_epoch(s);
    step(a, s, pa);
    step(b, s, pb);
    ASSERT_EQ(pa, pb) << "step " << s;
  }
  EXPECT_EQ(a.save_state(), b.save_state());
  // Wrong shapes and truncation are refused, and leave the state as it was.
  std::vector<std::byte> cut(blob.begin(), blob.end() - 4);
  EXPECT_THROW(b.load_state(cut), Error);
  EXPECT_EQ(a.save_state(), b.save_state());
  DgcCompressor other(o);
  other.setup(std::vector<LayerSpec>{{"w", 3001, 2, false}, {"b", 30, 1, false}}, 1, 0);
  try {
    other.load_state(blob);
    FAIL() << "loaded a blob of another shape";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kCorruptPayload);
  }
}

TEST(DgcKernels, CollectFindsExactlyThoseAtOrAboveThreshold) {
  const std::size_t n = 1237;
  std::vector<float> v = gaussian_values(n, 3);
  v[0] = -3.0f;
  v[n - 1] = 3.0f;
  std::vector<std::uint64_t> keys(n);
  const std::uint32_t t = std::bit_cast<std::uint32_t>(1.5f);
  const std::size_t count = kernels::dgc_collect(v.data(), n, t, keys.data());
  std::vector<std::uint32_t> got;
  for (std::size_t j = 0; j < count; ++j) got.push_back(kernels::dgc::key_index(keys[j]));
  std::vector<std::uint32_t> expect;
  for (std::uint32_t i = 0; i < n; ++i) {
    if (std::fabs(v[i]) >= 1.5f) expect.push_back(i);
  }
  EXPECT_EQ(got, expect);
}

TEST(DgcKernels, AccumulateSamplesCollectsAndCountsNonFinite) {
  const std::size_t n = 5000;
  std::vector<float> g = gaussian_values(n, 4), u(n, 0.5f), v(n, 0.25f);
  g[17] = std::numeric_limits<float>::infinity();
  std::vector<std::uint32_t> samples(kernels::dgc::sample_count(n, 13, 100));
  ASSERT_EQ(samples.size(), 50u);
  std::vector<std::uint64_t> keys(n);
  kernels::DgcAccumulateArgs args;
  args.momentum = 0.9f;
  args.sample_start = 13;
  args.sample_stride = 100;
  args.samples = samples.data();
  args.collect_bits = std::bit_cast<std::uint32_t>(2.0f);
  args.keys = keys.data();
  args.key_capacity = n;
  const kernels::DgcAccumulateResult r =
      kernels::dgc_accumulate(g.data(), u.data(), v.data(), n, args);
  EXPECT_EQ(r.nonfinite, 1u);
  EXPECT_FALSE(r.overflow);
  ASSERT_EQ(r.samples, samples.size());
  for (std::size_t j = 0; j < r.samples; ++j) {
    EXPECT_EQ(samples[j], std::bit_cast<std::uint32_t>(std::fabs(v[13 + 100 * j])));
  }
  EXPECT_EQ(u[17], 0.45f);
  EXPECT_EQ(v[17], 0.25f + 0.45f);
  EXPECT_EQ(u[0], 0.9f * 0.5f + g[0]);
  // The fused collection equals a separate pass over the updated v.
  std::vector<std::uint64_t> again(n);
  const std::size_t count = kernels::dgc_collect(v.data(), n, args.collect_bits, again.data());
  ASSERT_GT(count, 10u);
  ASSERT_EQ(r.candidates, count);
  EXPECT_TRUE(
      std::equal(keys.begin(), keys.begin() + static_cast<std::ptrdiff_t>(count), again.begin()));
  // Past the capacity it stops and says so.
  args.key_capacity = count / 2;
  const kernels::DgcAccumulateResult capped =
      kernels::dgc_accumulate(g.data(), u.data(), v.data(), n, args);
  EXPECT_TRUE(capped.overflow);
  EXPECT_EQ(capped.candidates, count / 2);
}

TEST(DgcKernels, Fp16PackKeepsRoundingInResidual) {
  std::vector<float> v = {1.0001f, -70000.0f, 3.0f}, u = {1.0f, 1.0f, 1.0f};
  std::vector<std::uint32_t> idx = {0, 1};
  std::vector<std::uint16_t> vals(2);
  kernels::dgc_pack_f16(idx.data(), 2, v.data(), u.data(), true, vals.data());
  EXPECT_EQ(half_to_float(vals[0]) + v[0], 1.0001f);
  EXPECT_EQ(half_to_float(vals[1]), -65504.0f);
  EXPECT_EQ(v[1], -70000.0f + 65504.0f);
  EXPECT_EQ(v[2], 3.0f);
  EXPECT_EQ(u[0], 0.0f);
  EXPECT_EQ(u[2], 1.0f);
}

TEST(DgcSgd, WeightDecayIsLocal) {
  DgcSgd sgd({0.5f, 0.1f});
  std::vector<float> p = {1.0f, -2.0f}, upd = {0.2f, 0.4f};
  sgd.step(p, upd);
  EXPECT_FLOAT_EQ(p[0], 1.0f - 0.5f * (0.2f + 0.1f * 1.0f));
  EXPECT_FLOAT_EQ(p[1], -2.0f - 0.5f * (0.4f - 0.1f * 2.0f));
  std::vector<float> short_update = {1.0f};
  EXPECT_THROW(sgd.step(p, short_update), Error);
}

}  // namespace
}  // namespace gradcomm
