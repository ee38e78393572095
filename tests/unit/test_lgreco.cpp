// L-GreCo in one process: the knapsack DP against brute force, its budget guarantee and
// exclusions, and the LgrecoCompressor's profiling and plan changes (no residual lost).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "gaussian_values.h"
#include "gradcomm/lgreco.h"
#include "kernels/cpu/quantize_kernels.h"

namespace gradcomm {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

struct Instance {
  LgrecoTable table;
  std::vector<std::uint32_t> defaults;
  int bins = 100;
};

Instance random_instance(std::mt19937& rng, std::size_t layers, std::size_t candidates, int bins) {
  Instance in{LgrecoTable(layers, candidates), std::vector<std::uint32_t>(layers), bins};
  std::uniform_int_distribution<std::uint64_t> bytes(1, 1000);
  std::uniform_real_distribution<double> error(0.0, 10.0);
  std::uniform_int_distribution<int> special(0, 29);
  for (std::size_t l = 0; l < layers; ++l) {
    in.defaults[l] = static_cast<std::uint32_t>(rng() % candidates);
    for (std::size_t c = 0; c < candidates; ++c) {
      in.table.bytes_at(l, c) = bytes(rng);
      double e = error(rng);
      switch (special(rng)) {  // sprinkle the awkward entries
        case 0: e = kNaN; break;
        case 1: e = kInf; break;
        case 2: e = 0.0; break;
        default: break;
      }
      in.table.error_at(l, c) = e;
    }
  }
  return in;
}

// Every plan enumerated; the fewest bytes within the same binned budget, with the same
// rule for layers whose default is non-finite (pinned) and the same fallback to the
// default when nothing fits or nothing fitting beats it.
std::uint64_t brute_force_bytes(const Instance& in, bool* fallback) {
  const LgrecoTable& t = in.table;
  double budget = 0;
  std::uint64_t default_bytes = 0, pinned_bytes = 0;
  std::vector<char> pinned(t.layers);
  for (std::size_t l = 0; l < t.layers; ++l) {
    const double e0 = t.error_at(l, in.defaults[l]);
    pinned[l] = !std::isfinite(e0);
    if (pinned[l]) {
      pinned_bytes += t.bytes_at(l, in.defaults[l]);
    } else {
      budget += e0;
      default_bytes += t.bytes_at(l, in.defaults[l]);
    }
  }
  std::uint64_t best = std::numeric_limits<std::uint64_t>::max();
  std::vector<std::size_t> pick(t.layers, 0);
  while (true) {
    std::int64_t bins = 0;
    std::uint64_t bytes = 0;
    bool ok = true;
    for (std::size_t l = 0; l < t.layers && ok; ++l) {
      if (pinned[l]) {
        if (pick[l] != 0) ok = false;  // enumerate pinned layers once
        continue;
      }
      const std::int64_t e = lgreco_error_bins(t.error_at(l, pick[l]), budget, in.bins);
      ok = e >= 0;
      bins += e;
      bytes += t.bytes_at(l, pick[l]);
    }
    if (ok && bins <= in.bins) best = std::min(best, bytes);
    std::size_t l = 0;
    while (l < t.layers && ++pick[l] == t.candidates) pick[l++] = 0;
    if (l == t.layers) break;
  }
  *fallback = best == std::numeric_limits<std::uint64_t>::max() || best > default_bytes;
  return (*fallback ? default_bytes : best) + pinned_bytes;
}

TEST(LgrecoKnapsack, MatchesBruteForceOnSmallInstances) {
  std::mt19937 rng(2024);
  LgrecoKnapsack solver;  // one solver across instances: the grow-only workspace is reused
  int fallbacks = 0, improved = 0;
  for (int trial = 0; trial < 600; ++trial) {
    const std::size_t layers = 1 + rng() % 6, candidates = 1 + rng() % 4;
    const int bins = std::vector<int>{1, 7, 100, 10000}[rng() % 4];
    const Instance in = random_instance(rng, layers, candidates, bins);
    bool fallback = false;
    const std::uint64_t expected = brute_force_bytes(in, &fallback);
    const LgrecoPlan& plan = solver.solve(in.table, in.defaults, in.bins);
    ASSERT_EQ(plan.bytes, expected) << "trial " << trial;
    ASSERT_EQ(plan.fallback, fallback) << "trial " << trial;
    // The plan is what it claims: its bytes add up, its binned error fits, and its real
    // error is within the budget (binning rounds up).
    std::uint64_t bytes = 0;
    std::int64_t used = 0;
    double error = 0;
    for (std::size_t l = 0; l < layers; ++l) {
      const std::uint32_t c = plan.choice[l];
      ASSERT_LT(c, candidates);
      bytes += in.table.bytes_at(l, c);
      if (!std::isfinite(in.table.error_at(l, in.defaults[l]))) {
        ASSERT_EQ(c, in.defaults[l]) << "a pinned layer moved";
        continue;
      }
      ASSERT_TRUE(std::isfinite(in.table.error_at(l, c))) << "a non-finite entry was chosen";
      used += lgreco_error_bins(in.table.error_at(l, c), plan.budget, in.bins);
      error += in.table.error_at(l, c);
    }
    ASSERT_EQ(bytes, plan.bytes);
    ASSERT_LE(error, plan.budget * (1 + 1e-12)) << "trial " << trial;
    if (!plan.fallback) {
      ASSERT_EQ(used, plan.bins_used);
      ASSERT_LE(used, in.bins);
    }
    fallbacks += plan.fallback;
    improved += !plan.fallback && plan.bytes < expected + 1 && plan.choice != in.defaults;
  }
  // Both branches were exercised.
  EXPECT_GT(fallbacks, 10);
  EXPECT_GT(improved, 100);
}

TEST(LgrecoKnapsack, NeverExceedsTheBudgetOnLargerInstances) {
  std::mt19937 rng(7);
  LgrecoKnapsack solver;
  for (int trial = 0; trial < 20; ++trial) {
    const Instance in = random_instance(rng, 60, 8, 10000);
    const LgrecoPlan& plan = solver.solve(in.table, in.defaults, in.bins);
    double error = 0;
    for (std::size_t l = 0; l < in.table.layers; ++l) {
      if (std::isfinite(in.table.error_at(l, in.defaults[l]))) error += in.table.error_at(l, plan.choice[l]);
    }
    EXPECT_LE(error, plan.budget * (1 + 1e-12));
    EXPECT_NEAR(error, plan.error, 1e-9 * plan.budget);
  }
}

// The shape L-GreCo exploits: a large layer drops to 2 bits, and a small layer pays for
// that error budget by going to 8 bits, for far fewer bytes than uniform 4 bits.
TEST(LgrecoKnapsack, TradesErrorBetweenLayers) {
  LgrecoTable t(2, 3);  // candidates: 2, 4, 8 bits
  const std::uint64_t big[3] = {2500, 5000, 10000}, small[3] = {25, 50, 100};
  const double big_err[3] = {3, 1, 0.1}, small_err[3] = {30, 10, 1};
  for (std::size_t c = 0; c < 3; ++c) {
    t.bytes_at(0, c) = big[c];
    t.bytes_at(1, c) = small[c];
    t.error_at(0, c) = big_err[c];
    t.error_at(1, c) = small_err[c];
  }
  LgrecoKnapsack solver;
  const std::vector<std::uint32_t> defaults = {1, 1};
  const LgrecoPlan& plan = solver.solve(t, defaults, 10000);
  EXPECT_FALSE(plan.fallback);
  EXPECT_DOUBLE_EQ(plan.budget, 11.0);
  EXPECT_EQ(plan.choice, (std::vector<std::uint32_t>{0, 2}));
  EXPECT_EQ(plan.bytes, 2600u);
  EXPECT_DOUBLE_EQ(plan.error, 4.0);
}

TEST(LgrecoKnapsack, ExclusionsTiesAndErrors) {
  LgrecoKnapsack solver;
  LgrecoTable t(2, 2);
  t.bytes_at(0, 0) = 10; t.error_at(0, 0) = kNaN;  // cheapest but unknown: never chosen
  t.bytes_at(0, 1) = 20; t.error_at(0, 1) = 1.0;
  t.bytes_at(1, 0) = 5;  t.error_at(1, 0) = 0.5;   // equal bytes: the lower index wins
  t.bytes_at(1, 1) = 5;  t.error_at(1, 1) = 0.5;
  // Budget 1.5 in 6 bins of 0.25: the default fits exactly (errors 4 + 2 bins).
  std::vector<std::uint32_t> defaults = {1, 1};
  LgrecoPlan plan = solver.solve(t, defaults, 6);
  EXPECT_EQ(plan.choice, (std::vector<std::uint32_t>{1, 0}));
  EXPECT_EQ(plan.pinned, 0u);
  // A non-finite default pins the layer and leaves it out of the budget.
  defaults = {0, 1};
  plan = solver.solve(t, defaults, 100);
  EXPECT_EQ(plan.choice[0], 0u);
  EXPECT_EQ(plan.pinned, 1u);
  EXPECT_DOUBLE_EQ(plan.budget, 0.5);
  EXPECT_EQ(plan.bytes, 15u);
  // Zero budget: only exact entries fit.
  LgrecoTable z(1, 2);
  z.bytes_at(0, 0) = 1; z.error_at(0, 0) = 0.1;
  z.bytes_at(0, 1) = 9; z.error_at(0, 1) = 0.0;
  defaults = {1};
  EXPECT_EQ(solver.solve(z, defaults, 10).choice[0], 1u);
  EXPECT_EQ(lgreco_error_bins(0.0, 0.0, 10), 0);
  EXPECT_EQ(lgreco_error_bins(0.1, 0.0, 10), -1);
  EXPECT_EQ(lgreco_error_bins(1.0, 1.0, 10), 10);
  EXPECT_EQ(lgreco_error_bins(1.01, 1.0, 10), -1);  // over the whole budget: excluded
  EXPECT_EQ(lgreco_error_bins(0.05, 1.0, 10), 1);
  EXPECT_EQ(lgreco_error_bins(kInf, 1.0, 10), -1);
  // Bad shapes are refused.
  EXPECT_THROW(solver.solve(z, std::vector<std::uint32_t>{}, 10), Error);
  EXPECT_THROW(solver.solve(z, std::vector<std::uint32_t>{2}, 10), Error);
  EXPECT_THROW(solver.solve(z, defaults, 0), Error);
}

using testing::gaussian_values;

TEST(LgrecoCompressor, RejectsBadOptions) {
  auto refused = [](auto change) {
    LgrecoOptions options;
    change(options);
    EXPECT_THROW(LgrecoCompressor{options}, Error);
  };
  refused([](LgrecoOptions& o) { o.bit_widths = {}; });
  refused([](LgrecoOptions& o) { o.bit_widths = {2, 9}; });
  refused([](LgrecoOptions& o) { o.bit_widths = {2, 2, 4}; });
  refused([](LgrecoOptions& o) { o.bit_widths = {2, 8}; });  // default 4 not a candidate
  refused([](LgrecoOptions& o) { o.period = 0; });
  refused([](LgrecoOptions& o) { o.bins = 0; });
  refused([](LgrecoOptions& o) { o.quantize.bucket_size = 7; });
  EXPECT_THROW(parse_lgreco_family("lowrank"), Error);
}

// Profiling measures, for each bit width, exactly the error the quantizer would make on the
// error-fed input; a plan change keeps the residual, so over the change what was sent
// plus what is kept still equals what came in.
TEST(LgrecoCompressor, ProfilesAndChangesSettingsWithoutLosingResidual) {
  LgrecoOptions options;
  options.period = 2;
  options.quantize.bucket_size = 64;
  LgrecoCompressor c(options);
  std::vector<LayerSpec> layers = {{"w1", 500, 2, false}, {"b1", 10, 1, false}, {"w2", 300, 2, false}};
  c.setup(layers, 1, 0);
  EXPECT_TRUE(c.is_planned(0));
  EXPECT_FALSE(c.is_planned(1));
  EXPECT_FALSE(c.profiles_step(0));
  EXPECT_TRUE(c.profiles_step(1));
  EXPECT_TRUE(c.profiles_step(3));
  std::int64_t last_step = -1;
  auto run_step = [&](std::int64_t step, std::size_t layer, const std::vector<float>& g) {
    if (step != last_step) c.set_step(step);  // as the Exchanger: once per step
    last_step = step;
    const LayerWire w = c.wire(layer);
    std::vector<std::uint8_t> payload(w.bytes());
    std::vector<float> grad = g, out(g.size());
    c.encode(layer, TensorView::of(std::span<float>(grad)), TensorView(payload.data(), w.count, w.dtype));
    c.decode(layer, TensorView(payload.data(), w.count, w.dtype), TensorView::of(std::span<float>(out)));
    return out;
  };
  const std::vector<float> g0 = gaussian_values(500, 1, 1.0f);
  run_step(0, 0, g0);
  EXPECT_FALSE(c.table_ready());
  const std::vector<float> kept(c.quantizer()->residual(0).begin(), c.quantizer()->residual(0).end());
  const std::vector<float> g1 = gaussian_values(500, 2, 1.0f);
  run_step(1, 0, g1);
  run_step(1, 1, gaussian_values(10, 3, 1.0f));
  EXPECT_FALSE(c.table_ready());  // w2 not encoded yet
  run_step(1, 2, gaussian_values(300, 4, 1.0f));
  ASSERT_TRUE(c.table_ready());
  // The table for w1 is the quantizer's own error on x = g1 + residual(step 0).
  std::vector<float> x(500);
  for (std::size_t i = 0; i < 500; ++i) x[i] = g1[i] + kept[i];
  std::vector<float> mins(8), maxs(8);
  kernels::bucket_min_max(x.data(), 500, 64, mins.data(), maxs.data());
  for (std::size_t cand = 0; cand < c.num_candidates(); ++cand) {
    const double expected = std::sqrt(kernels::quantize_squared_error(
        x.data(), 500, 64, options.bit_widths[cand], false, mins.data(), maxs.data()));
    EXPECT_DOUBLE_EQ(c.local_table().error_at(0, cand), expected) << c.candidate_name(cand);
    EXPECT_EQ(c.local_table().bytes_at(0, cand),
              allgather_wire_bytes(quantize_payload_bytes(500, options.bit_widths[cand], 64), 1));
    if (cand > 0) {
      EXPECT_LT(c.local_table().error_at(0, cand), c.local_table().error_at(0, cand - 1));
    }
    EXPECT_EQ(c.local_table().error_at(1, cand), 0.0);  // not planned
  }
  c.consume_table();
  EXPECT_FALSE(c.table_ready());

  // Move w1 from 4 to 2 bits, then to 8: each time the residual carries over.
  for (const std::uint32_t choice : {0u, 5u}) {
    const std::vector<float> before(c.quantizer()->residual(0).begin(), c.quantizer()->residual(0).end());
    c.apply_plan(std::vector<std::uint32_t>{choice, 2, 2});
    EXPECT_EQ(c.quantizer()->layer_bits(0), options.bit_widths[choice]);
    EXPECT_EQ(std::vector<float>(c.quantizer()->residual(0).begin(), c.quantizer()->residual(0).end()), before);
    const std::vector<float> g = gaussian_values(500, 10 + choice, 1.0f);
    const std::vector<float> sent = run_step(2, 0, g);
    for (std::size_t i = 0; i < 500; ++i) {
      const float in = g[i] + before[i];
      ASSERT_NEAR(sent[i] + c.quantizer()->residual(0)[i], in, 4e-7f * (std::fabs(in) + std::fabs(sent[i])));
    }
  }
  EXPECT_THROW(c.apply_plan(std::vector<std::uint32_t>{0, 0, 0}), Error);  // dense layer moved
  EXPECT_THROW(c.apply_plan(std::vector<std::uint32_t>{9, 2, 2}), Error);
  EXPECT_THROW(c.apply_plan(std::vector<std::uint32_t>{0, 2}), Error);

  // State carries the plan along with the residuals.
  LgrecoCompressor d(options);
  d.setup(layers, 1, 0);
  d.load_state(c.save_state());
  EXPECT_EQ(std::vector<std::uint32_t>(d.choice().begin(), d.choice().end()),
            std::vector<std::uint32_t>(c.choice().begin(), c.choice().end()));
}

}  // namespace
}  // namespace gradcomm

namespace gradcomm {
namespace {

const std::vector<double> kDensities = {0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05};

// The exact error of DGC's top-k for each of kDensities: a full sort of x^2.
std::vector<double> exact_topk_errors(const std::vector<float>& x) {
  std::vector<double> sq(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) sq[i] = double{x[i]} * x[i];
  std::sort(sq.begin(), sq.end(), std::greater<>());
  std::vector<double> errors;
  for (const double density : kDensities) {
    const auto k = std::clamp<std::size_t>(static_cast<std::size_t>(std::ceil(density * x.size())), 1, x.size());
    double rest = 0;
    for (std::size_t i = k; i < sq.size(); ++i) rest += sq[i];
    errors.push_back(std::sqrt(rest));
  }
  return errors;
}

TEST(LgrecoTopkErrors, ExactWhenTheSampleIsTheLayer) {
  std::vector<float> work;
  for (const std::size_t n : {std::size_t{1}, std::size_t{37}, std::size_t{5000}}) {
    const std::vector<float> x = gaussian_values(n, static_cast<unsigned>(n), 1.0f);
    std::vector<double> errors(kDensities.size());
    lgreco_topk_errors(x, kDensities, 16384, errors, work);
    const std::vector<double> exact = exact_topk_errors(x);
    for (std::size_t c = 0; c < kDensities.size(); ++c) {
      EXPECT_NEAR(errors[c], exact[c], 1e-9 * (1 + errors[c])) << n;
    }
  }
}

// The sampled estimate against the exact error on 400,000 elements with a 16,384 sample,
// for a Gaussian and a heavy-tailed (cubed Gaussian) layer. Measured worst relative error
// over the seven default densities: 0.06% (Gaussian), 1.6% (heavy tail). Asserted: 5%.
TEST(LgrecoTopkErrors, SampledEstimateIsAccurate) {
  const std::size_t n = 400000;
  std::vector<float> work;
  for (const bool heavy : {false, true}) {
    std::vector<float> x = gaussian_values(n, heavy ? 8u : 9u, 1.0f);
    if (heavy) {
      for (float& v : x) v = v * v * v;
    }
    std::vector<double> errors(kDensities.size());
    lgreco_topk_errors(x, kDensities, 16384, errors, work);
    double worst = 0;
    const std::vector<double> exact_errors = exact_topk_errors(x);
    for (std::size_t c = 0; c < kDensities.size(); ++c) {
      const double exact = exact_errors[c];
      worst = std::max(worst, std::fabs(errors[c] - exact) / exact);
      EXPECT_NEAR(errors[c], exact, 0.05 * exact) << (heavy ? "heavy" : "gaussian") << " density " << kDensities[c];
    }
    RecordProperty(heavy ? "worst_relative_error_heavy" : "worst_relative_error_gaussian", std::to_string(worst));
    std::printf("lgreco_topk_errors %s: worst relative error %.4f\n", heavy ? "heavy-tailed" : "gaussian", worst);
  }
}

// The DGC family profiles v' = v + m*u + g (paper Eq. 7) before selection: with exact top-k
// selection and a layer small enough to be profiled exactly, the error it predicts for the
// density in force is the norm of what DGC then keeps in v. A density change keeps u and v.
// clip_norm > 0: profiling must scale the gradient as DGC's local clipping does.
void check_dgc_family_profiles_what_dgc_keeps(float clip_norm) {
  LgrecoOptions options;
  options.family = LgrecoFamily::kDgcDensity;
  options.dgc.clip_norm = clip_norm;
  options.period = 1;
  options.dgc.selection = DgcSelection::kExact;
  options.dgc.warmup_densities = {};
  LgrecoCompressor c(options);
  std::vector<LayerSpec> layers = {{"w", 3000, 2, false}, {"b", 20, 1, false}};
  c.setup(layers, 2, 0);  // two ranks (so wire bytes are not 0), simulated by one
  EXPECT_TRUE(c.is_planned(0));
  EXPECT_FALSE(c.is_planned(1));
  EXPECT_EQ(c.candidate_name(1), "density 0.001");
  std::size_t c_in_force = 1;  // the default, 0.001
  for (std::int64_t step = 0; step < 6; ++step) {
    c.set_step(step);
    for (std::size_t l = 0; l < 2; ++l) {
      std::vector<float> g = gaussian_values(layers[l].numel, static_cast<unsigned>(10 * step + l), 1.0f);
      const LayerWire w = c.wire(l);
      std::vector<std::uint8_t> payload(w.bytes());
      c.encode(l, TensorView::of(std::span<float>(g)), TensorView(payload.data(), w.count, w.dtype));
      // An allgather's result is both ranks' payloads; an allreduce's is the sum.
      std::vector<std::uint8_t> received = payload;
      if (w.collective == Collective::kAllgather) received.insert(received.end(), payload.begin(), payload.end());
      const std::size_t count = w.collective == Collective::kAllgather ? 2 * w.count : w.count;
      std::vector<float> out(g.size());
      c.decode(l, TensorView(received.data(), count, w.dtype), TensorView::of(std::span<float>(out)));
    }
    ASSERT_TRUE(c.table_ready());
    double kept = 0;
    for (const float v : c.dgc()->residual(0)) kept += double{v} * v;
    EXPECT_NEAR(c.local_table().error_at(0, c_in_force), std::sqrt(kept), 1e-4 * std::sqrt(kept)) << step;
    for (std::size_t cand = 1; cand < c.num_candidates(); ++cand) {
      EXPECT_LE(c.local_table().error_at(0, cand), c.local_table().error_at(0, cand - 1));
      EXPECT_LT(c.local_table().bytes_at(0, cand - 1), c.local_table().bytes_at(0, cand));
    }
    c.consume_table();
    // Switch density; u and v carry over unchanged.
    const std::vector<float> u(c.dgc()->momentum(0).begin(), c.dgc()->momentum(0).end());
    const std::vector<float> v(c.dgc()->residual(0).begin(), c.dgc()->residual(0).end());
    c_in_force = static_cast<std::size_t>(step) % c.num_candidates();
    c.apply_plan(std::vector<std::uint32_t>{static_cast<std::uint32_t>(c_in_force), 1});
    EXPECT_DOUBLE_EQ(c.dgc()->layer_density(0), options.densities[c_in_force]);
    EXPECT_EQ(std::vector<float>(c.dgc()->momentum(0).begin(), c.dgc()->momentum(0).end()), u);
    EXPECT_EQ(std::vector<float>(c.dgc()->residual(0).begin(), c.dgc()->residual(0).end()), v);
  }
  // The whole state, plan included, round-trips.
  LgrecoCompressor d(options);
  d.setup(layers, 1, 0);
  d.load_state(c.save_state());
  EXPECT_EQ(std::vector<std::uint32_t>(d.choice().begin(), d.choice().end()),
            std::vector<std::uint32_t>(c.choice().begin(), c.choice().end()));
  EXPECT_EQ(std::vector<float>(d.dgc()->residual(0).begin(), d.dgc()->residual(0).end()),
            std::vector<float>(c.dgc()->residual(0).begin(), c.dgc()->residual(0).end()));
  auto blob = c.save_state();
  blob.pop_back();
  EXPECT_THROW(d.load_state(blob), Error);
}

TEST(LgrecoCompressor, DgcFamilyProfilesWhatDgcKeepsAndKeepsStateAcrossChanges) {
  check_dgc_family_profiles_what_dgc_keeps(0.0f);
}

// Gradients of norm about 32 clipped to 5/sqrt(2): scaled by about 0.11 before DGC.
TEST(LgrecoCompressor, DgcFamilyProfilesWithLocalClipping) { check_dgc_family_profiles_what_dgc_keeps(5.0f); }

}  // namespace
}  // namespace gradcomm
