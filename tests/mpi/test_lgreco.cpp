// QuantizeCompressor and L-GreCo through the Exchanger on 2, 3 and 4 ranks: bitwise
// identical results, error feedback that loses nothing (summed over ranks, across plan
// changes), and the same plan on every rank after every re-plan although each rank
// measures different local errors.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "gradcomm/gradcomm.h"
#include "gradcomm/lgreco.h"
#include "gradcomm/quantize.h"
#include "mpi/mpi_test_util.h"

namespace gradcomm {
namespace {

using testing::all_ranks;
using testing::same_on_all_ranks;

std::vector<LayerSpec> model_layers() {
  // Uneven shapes, a 1-D layer (allreduced densely), lengths off the bucket and off 8.
  return {{"conv", 20000, 4}, {"fc1.w", 3001, 2}, {"fc1.b", 50, 1}, {"fc2.w", 700, 2}, {"fc3.w", 9, 2}};
}

// Per-layer scales differ by orders of magnitude (so the DP has something to trade), and
// every rank draws its own noise (so local error tables differ).
std::vector<std::vector<float>> gradients(const std::vector<LayerSpec>& layers, int rank, std::int64_t step) {
  const float scales[] = {0.01f, 1.0f, 0.5f, 3.0f, 0.2f};
  std::vector<std::vector<float>> grads;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    std::mt19937 rng(static_cast<unsigned>(1000003 * rank + 1009 * l + step));
    std::normal_distribution<float> noise(0.0f, 1.0f + 0.5f * static_cast<float>(rank));
    std::vector<float> g(layers[l].numel);
    for (std::size_t i = 0; i < g.size(); ++i) {
      g[i] = scales[l] * (std::sin(0.37f * static_cast<float>(i) + static_cast<float>(l + step)) + noise(rng));
    }
    grads.push_back(std::move(g));
  }
  return grads;
}

struct StepBuffers {
  std::vector<std::vector<float>> grads, outs;
  std::vector<TensorView> grad_views, out_views;
  StepBuffers(std::vector<std::vector<float>> g) : grads(std::move(g)) {
    for (auto& v : grads) outs.emplace_back(v.size(), -7.0f);
    for (std::size_t l = 0; l < grads.size(); ++l) {
      grad_views.push_back(TensorView::of(std::span<float>(grads[l])));
      out_views.push_back(TensorView::of(std::span<float>(outs[l])));
    }
  }
};

// Error feedback over all ranks: sum_r (g_r + old residual_r - new residual_r) is what was
// sent, and p * out must equal it, to fp32 rounding (of each rank's x - dequantized value,
// and of the rank-order sum of the dequantized values).
void expect_nothing_lost(MpiCommunicator& comm, const QuantizeCompressor& q, std::size_t layer,
                         const std::vector<float>& g, const std::vector<float>& old_residual,
                         const std::vector<float>& out, const char* when) {
  const std::span<const float> now = q.residual(layer);
  const std::size_t n = g.size();
  std::vector<double> sent(n), magnitude(n);
  for (std::size_t i = 0; i < n; ++i) {
    sent[i] = double{g[i]} + old_residual[i] - now[i];
    // |dequantized| <= |x| + |new residual|: the scale of the float sum's rounding.
    magnitude[i] = std::fabs(double{g[i]}) + std::fabs(double{old_residual[i]}) + std::fabs(double{now[i]});
  }
  MPI_Allreduce(MPI_IN_PLACE, sent.data(), static_cast<int>(n), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, magnitude.data(), static_cast<int>(n), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  std::size_t bad = 0, first = n;
  for (std::size_t i = 0; i < n; ++i) {
    const double expected = double{out[i]} * comm.size();
    if (std::fabs(expected - sent[i]) > 0x1p-21 * magnitude[i] * comm.size()) {
      bad += 1;
      first = std::min(first, i);
    }
  }
  EXPECT_EQ(bad, 0u) << when << ": layer " << layer << " rank " << comm.rank() << " first element " << first;
}

TEST(QuantizeMpi, ExchangerResultsIdenticalAndNothingLost) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const auto layers = model_layers();
  for (const Rounding rounding : {Rounding::kNearest, Rounding::kStochastic}) {
    for (const int bits : {1, 3, 4, 8}) {
      QuantizeOptions options;
      options.bits = bits;
      options.bucket_size = 128;
      options.rounding = rounding;
      auto owned = std::make_unique<QuantizeCompressor>(options);
      QuantizeCompressor& q = *owned;
      Exchanger ex(comm, std::move(owned), layers, {.bucket_bytes = 4096});
      for (std::int64_t step = 0; step < 3; ++step) {
        StepBuffers b(gradients(layers, comm.rank(), step));
        std::vector<std::vector<float>> old;
        for (std::size_t l = 0; l < layers.size(); ++l) {
          old.emplace_back(q.residual(l).begin(), q.residual(l).end());
        }
        ex.exchange(b.grad_views, b.out_views);
        for (std::size_t l = 0; l < layers.size(); ++l) {
          ASSERT_TRUE(same_on_all_ranks(b.outs[l])) << "layer " << l << " bits " << bits;
          if (q.is_quantized(l)) expect_nothing_lost(comm, q, l, b.grads[l], old[l], b.outs[l], "quantize");
        }
      }
    }
  }
}

TEST(QuantizeMpi, MismatchedBitsFailAtSetupOnEveryRank) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  QuantizeOptions options;
  options.bits = comm.rank() == comm.size() - 1 ? 3 : 4;
  try {
    Exchanger ex(comm, std::make_unique<QuantizeCompressor>(options), model_layers());
    ADD_FAILURE() << "rank " << comm.rank() << ": no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kSizeMismatch) << e.what();
  }
}

TEST(LgrecoMpi, SamePlanOnEveryRankAfterEveryReplanAndNothingLost) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const auto layers = model_layers();
  LgrecoOptions options;
  options.period = 3;
  options.quantize.bucket_size = 128;
  auto owned = std::make_unique<LgrecoCompressor>(options);
  LgrecoCompressor& lg = *owned;
  Exchanger ex(comm, std::move(owned), layers, {.bucket_bytes = 8192});
  LgrecoPlanner planner(comm, lg);
  QuantizeCompressor& q = *lg.quantizer();

  std::uint64_t default_wire = 0;
  int replans = 0, nonuniform = 0, local_tables_differ = 0;
  for (std::int64_t step = 0; step < 13; ++step) {
    StepBuffers b(gradients(layers, comm.rank(), step));
    std::vector<std::vector<float>> old;
    for (std::size_t l = 0; l < layers.size(); ++l) old.emplace_back(q.residual(l).begin(), q.residual(l).end());
    const std::vector<std::uint32_t> in_force(lg.choice().begin(), lg.choice().end());
    const StepStats stats = ex.exchange(b.grad_views, b.out_views);
    for (std::size_t l = 0; l < layers.size(); ++l) {
      ASSERT_TRUE(same_on_all_ranks(b.outs[l])) << "step " << step << " layer " << l;
      if (lg.is_planned(l)) expect_nothing_lost(comm, q, l, b.grads[l], old[l], b.outs[l], "lgreco");
    }
    if (step == 0) default_wire = stats.wire_bytes;
    if (in_force != std::vector<std::uint32_t>(lg.default_choice().begin(), lg.default_choice().end())) {
      // A plan never sends more payload than uniform 4 bits (the DP minimizes bytes within
      // the default's error, and falls back to the default otherwise); the Exchanger's
      // framing may regroup layers, a few header words per layer at most.
      EXPECT_LE(stats.wire_bytes, default_wire + 16 * layers.size() * (comm.size() - 1)) << "step " << step;
    }

    const bool profiled = lg.profiles_step(step);
    if (profiled && comm.size() > 1) {
      local_tables_differ += !same_on_all_ranks(lg.local_table().error);
    }
    const bool replanned = planner.after_step();
    ASSERT_EQ(replanned, profiled) << "step " << step;
    ASSERT_TRUE(all_ranks(replanned == profiled));
    if (!replanned) continue;
    replans += 1;
    const LgrecoPlan& plan = planner.plan();
    // The agreed table and the plan are bitwise the same everywhere, with no broadcast.
    ASSERT_TRUE(same_on_all_ranks(planner.agreed_table().error)) << "step " << step;
    ASSERT_TRUE(same_on_all_ranks(plan.choice)) << "step " << step;
    const std::vector<std::uint32_t> applied(lg.choice().begin(), lg.choice().end());
    EXPECT_EQ(applied, plan.choice);
    for (std::size_t l = 0; l < layers.size(); ++l) {
      if (lg.is_planned(l)) {
        EXPECT_EQ(q.layer_bits(l), options.bit_widths[plan.choice[l]]);
      }
    }
    EXPECT_LE(plan.error, plan.budget * (1 + 1e-12));
    nonuniform += plan.choice != std::vector<std::uint32_t>(lg.default_choice().begin(), lg.default_choice().end());
  }
  EXPECT_EQ(replans, 4);  // steps 2, 5, 8, 11
  EXPECT_EQ(planner.stats().replans, 4);
  EXPECT_GT(nonuniform, 0) << "the plan never left uniform 4 bits: the test shows nothing";
  EXPECT_GT(planner.stats().changed_layers, 0);
  if (comm.size() > 1) {
    EXPECT_EQ(local_tables_differ, 4) << "ranks measured identical errors";
  }
}

// The DGC family: the same plan everywhere after every re-plan, identical updates, and a
// density change hands u and v to the new setting unchanged.
TEST(LgrecoMpi, DgcFamilySamePlanEverywhereAndStateKept) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const auto layers = model_layers();
  LgrecoOptions options;
  options.family = LgrecoFamily::kDgcDensity;
  options.period = 3;
  options.dgc.warmup_densities = {};
  auto owned = std::make_unique<LgrecoCompressor>(options);
  LgrecoCompressor& lg = *owned;
  Exchanger ex(comm, std::move(owned), layers, {.bucket_bytes = 8192});
  LgrecoPlanner planner(comm, lg);
  int replans = 0, nonuniform = 0;
  const std::vector<std::uint32_t> uniform(lg.default_choice().begin(), lg.default_choice().end());
  for (std::int64_t step = 0; step < 13; ++step) {
    StepBuffers b(gradients(layers, comm.rank(), step));
    ex.exchange(b.grad_views, b.out_views);
    for (std::size_t l = 0; l < layers.size(); ++l) {
      ASSERT_TRUE(same_on_all_ranks(b.outs[l])) << "step " << step << " layer " << l;
    }
    std::vector<std::vector<float>> u, v;
    for (std::size_t l = 0; l < layers.size(); ++l) {
      u.emplace_back(lg.dgc()->momentum(l).begin(), lg.dgc()->momentum(l).end());
      v.emplace_back(lg.dgc()->residual(l).begin(), lg.dgc()->residual(l).end());
    }
    const std::vector<std::uint32_t> before(lg.choice().begin(), lg.choice().end());
    if (!planner.after_step()) continue;
    replans += 1;
    const LgrecoPlan& plan = planner.plan();
    ASSERT_TRUE(same_on_all_ranks(planner.agreed_table().error)) << "step " << step;
    ASSERT_TRUE(same_on_all_ranks(plan.choice)) << "step " << step;
    EXPECT_LE(plan.error, plan.budget * (1 + 1e-12));
    nonuniform += plan.choice != uniform;
    for (std::size_t l = 0; l < layers.size(); ++l) {
      EXPECT_DOUBLE_EQ(lg.dgc()->layer_density(l), options.densities[plan.choice[l]]);
      if (plan.choice[l] == before[l]) continue;
      EXPECT_EQ(std::vector<float>(lg.dgc()->momentum(l).begin(), lg.dgc()->momentum(l).end()), u[l]);
      EXPECT_EQ(std::vector<float>(lg.dgc()->residual(l).begin(), lg.dgc()->residual(l).end()), v[l]);
    }
  }
  EXPECT_EQ(replans, 4);
  EXPECT_GT(nonuniform, 0) << "the plan never left the uniform density: the test shows nothing";
}

}  // namespace
}  // namespace gradcomm
