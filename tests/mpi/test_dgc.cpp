// DgcCompressor through the Exchanger over a real MpiCommunicator (2, 3 and 4 ranks).
// Gradients are a pure function of (rank, step, layer, element), so every rank can build
// every other rank's gradient and compute the expected result locally.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "gradcomm/dense.h"
#include "gradcomm/dgc.h"
#include "gradcomm/exchanger.h"
#include "gradcomm/mpi_communicator.h"
#include "mpi/gradient_model.h"
#include "mpi/mpi_test_util.h"
#include "unit/dgc_reference.h"

namespace gradcomm {
namespace {

using gradcomm::testing::reference_topk;

using gradcomm::testing::all_ranks;
using gradcomm::testing::Buffers;
using gradcomm::testing::grad_value;
using gradcomm::testing::same_on_all_ranks;
using gradcomm::testing::world_rank;
using gradcomm::testing::world_size;

// A conv weight of prime size, a bias (1-D: always dense), a fully connected weight.
std::vector<LayerSpec> model() {
  return {{"conv", 4099, 4, false}, {"bias", 37, 1, false}, {"fc", 2000, 2, false}};
}

DgcOptions no_warmup(double density, DgcSelection selection) {
  DgcOptions o;
  o.density = density;
  o.warmup_densities = {};
  o.selection = selection;
  return o;
}

std::unique_ptr<Exchanger> make_dgc(MpiCommunicator& comm, const DgcOptions& o,
                                    ExchangerOptions xo = {}) {
  return std::make_unique<Exchanger>(comm, std::make_unique<DgcCompressor>(o), model(), xo);
}

DgcCompressor& dgc_of(Exchanger& x) { return dynamic_cast<DgcCompressor&>(x.compressor()); }

float tolerance(float reference) { return 2e-6f * std::fabs(reference) + 1e-6f; }

TEST(DgcMpi, FullDensityEqualsDenseAllreduce) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const std::vector<LayerSpec> layers = model();
  // Momentum 0 and the dense fallback: the same allreduce as DenseCompressor.
  DgcOptions plain = no_warmup(1.0, DgcSelection::kSampled);
  plain.momentum = 0.0f;
  // The sparse path at full density, with momentum and without masking: momentum SGD on
  // the dense average.
  DgcOptions sparse = no_warmup(1.0, DgcSelection::kExact);
  sparse.dense_fallback = false;
  sparse.momentum_masking = false;
  auto dgc_plain = make_dgc(comm, plain);
  auto dgc_sparse = make_dgc(comm, sparse);
  Exchanger dense(comm, std::make_unique<DenseCompressor>(), layers);
  ASSERT_FALSE(dgc_of(*dgc_sparse).is_sparse(1));
  ASSERT_TRUE(dgc_of(*dgc_sparse).is_sparse(0));
  ASSERT_FALSE(dgc_of(*dgc_plain).is_sparse(0));
  Buffers a(layers), b(layers), d(layers);
  std::vector<std::vector<float>> u;
  for (const LayerSpec& l : layers) u.emplace_back(l.numel, 0.0f);
  for (int step = 0; step < 3; ++step) {
    a.fill(world_rank(), step);
    b.fill(world_rank(), step);
    d.fill(world_rank(), step);
    dgc_plain->exchange(a.grad_views, a.out_views);
    dgc_sparse->exchange(b.grad_views, b.out_views);
    dense.exchange(d.grad_views, d.out_views);
    for (std::size_t l = 0; l < layers.size(); ++l) {
      for (std::size_t i = 0; i < layers[l].numel; ++i) {
        const float avg = d.outs[l][i];
        u[l][i] = 0.9f * u[l][i] + avg;
        ASSERT_NEAR(a.outs[l][i], avg, tolerance(avg)) << "layer " << l << " element " << i;
        ASSERT_NEAR(b.outs[l][i], u[l][i], 4 * tolerance(u[l][i]))
            << "layer " << l << " element " << i << " step " << step;
      }
    }
  }
}

TEST(DgcMpi, ExactSelectionMatchesReference) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const std::vector<LayerSpec> layers = model();
  const int p = world_size();
  const DgcOptions o = no_warmup(0.01, DgcSelection::kExact);
  auto x = make_dgc(comm, o);
  Buffers buf(layers);
  // Reference state of every rank, sparse layers (0 and 2).
  std::vector<std::vector<gradcomm::testing::DgcReferenceRank>> ref(static_cast<std::size_t>(p));
  for (auto& r : ref)
    for (const LayerSpec& l : layers) r.emplace_back(l.numel);
  for (int step = 0; step < 4; ++step) {
    buf.fill(world_rank(), step);
    x->exchange(buf.grad_views, buf.out_views);
    for (std::size_t l : {std::size_t{0}, std::size_t{2}}) {
      ASSERT_TRUE(dgc_of(*x).is_sparse(l));
      const std::size_t n = layers[l].numel, k = dgc_of(*x).k(l);
      std::vector<float> expect(n, 0.0f);
      for (int r = 0; r < p; ++r) {
        ref[static_cast<std::size_t>(r)][l].step([&](std::size_t i) { return grad_value(r, step, l, i); }, k, p, expect);
      }
      const auto& mine = ref[static_cast<std::size_t>(world_rank())][l];
      ASSERT_TRUE(std::equal(mine.v.begin(), mine.v.end(), dgc_of(*x).residual(l).begin()))
          << "residual of layer " << l << " step " << step;
      ASSERT_TRUE(std::equal(mine.u.begin(), mine.u.end(), dgc_of(*x).momentum(l).begin()))
          << "momentum of layer " << l << " step " << step;
      for (std::size_t i = 0; i < n; ++i) {
        ASSERT_EQ(buf.outs[l][i], expect[i])
            << "layer " << l << " element " << i << " step " << step;
      }
    }
  }
}

TEST(DgcMpi, NothingLostAndBitwiseIdenticalAcrossRanks) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const std::vector<LayerSpec> layers = model();
  const int p = world_size();
  for (DType values : {DType::kFloat32, DType::kFloat16}) {
    DgcOptions o;  // sampled, the paper's warm-up, advanced by the Exchanger's step
    o.density = 0.002;
    o.steps_per_epoch = 2;
    o.value_dtype = values;
    o.dense_dtype = values;
    o.nesterov = values == DType::kFloat16;
    auto x = make_dgc(comm, o);
    DgcCompressor& c = dgc_of(*x);
    Buffers buf(layers);
    for (int step = 0; step < 12; ++step) {
      buf.fill(world_rank(), step);
      // What enters v this step: (Nesterov) m*(u + g) + g, or (plain) m*u + g.
      std::vector<std::vector<float>> balance(layers.size());
      for (std::size_t l : {std::size_t{0}, std::size_t{2}}) {
        balance[l] = testing::dgc_ledger_input(c.momentum(l), c.residual(l), buf.grads[l], o.nesterov);
      }
      const StepStats& stats = x->exchange(buf.grad_views, buf.out_views);
      EXPECT_FALSE(stats.skipped);
      for (std::size_t l = 0; l < layers.size(); ++l) {
        ASSERT_TRUE(same_on_all_ranks(buf.outs[l])) << "layer " << l << " step " << step;
      }
      // Summed over ranks: accumulated input - residual = what was sent = p * update.
      for (std::size_t l : {std::size_t{0}, std::size_t{2}}) {
        if (!c.is_sparse(l)) continue;
        const auto v = c.residual(l);
        std::vector<float> sent(layers[l].numel), scale(layers[l].numel);
        for (std::size_t i = 0; i < sent.size(); ++i) {
          sent[i] = balance[l][i] - v[i];
          scale[i] = std::fabs(balance[l][i]) + std::fabs(v[i]);
        }
        MPI_Allreduce(MPI_IN_PLACE, sent.data(), static_cast<int>(sent.size()), MPI_FLOAT, MPI_SUM,
                      MPI_COMM_WORLD);
        MPI_Allreduce(MPI_IN_PLACE, scale.data(), static_cast<int>(scale.size()), MPI_FLOAT,
                      MPI_SUM, MPI_COMM_WORLD);
        for (std::size_t i = 0; i < sent.size(); ++i) {
          const float got = buf.outs[l][i] * static_cast<float>(p);
          ASSERT_NEAR(got, sent[i], 4e-6f * scale[i] + 1e-6f)
              << "layer " << l << " element " << i << " step " << step << " values "
              << dtype_name(values);
        }
        EXPECT_GT(c.last_stats(l).sent, 0u);
      }
    }
    EXPECT_DOUBLE_EQ(c.density(), 0.002);  // warm-up over after 4 epochs of 2 steps
  }
}

TEST(DgcMpi, SparseToDenseFlushesResidualAndResyncsMomentum) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const std::vector<LayerSpec> layers = model();
  const int p = world_size();
  DgcOptions o;
  // Epoch 0 at the target (sparse), then a rising schedule: dense for any p >= 2 (0.6 > 1/p).
  o.warmup_densities = {0.01, 0.6, 0.6};
  o.density = 0.01;
  o.steps_per_epoch = 2;
  auto x = make_dgc(comm, o);
  DgcCompressor& c = dgc_of(*x);
  Buffers buf(layers);
  for (int step = 0; step < 5; ++step) {
    buf.fill(world_rank(), step);
    std::vector<float> balance(layers[0].numel);
    {
      const auto u = c.momentum(0);
      const auto v = c.residual(0);
      for (std::size_t i = 0; i < balance.size(); ++i)
        balance[i] = v[i] + 0.9f * u[i] + buf.grads[0][i];
    }
    x->exchange(buf.grad_views, buf.out_views);
    for (std::size_t l = 0; l < layers.size(); ++l) {
      ASSERT_TRUE(same_on_all_ranks(buf.outs[l])) << "layer " << l << " step " << step;
    }
    ASSERT_EQ(c.is_sparse(0), step < 2);
    if (step == 2) {
      // Everything accumulated was sent; u and v restart at 0 on every rank.
      for (float v : c.residual(0)) ASSERT_EQ(v, 0.0f);
      for (float u : c.momentum(0)) ASSERT_EQ(u, 0.0f);
      MPI_Allreduce(MPI_IN_PLACE, balance.data(), static_cast<int>(balance.size()), MPI_FLOAT,
                    MPI_SUM, MPI_COMM_WORLD);
      for (std::size_t i = 0; i < balance.size(); ++i) {
        ASSERT_NEAR(buf.outs[0][i] * static_cast<float>(p), balance[i],
                    1e-5f * (std::fabs(balance[i]) + 1.0f))
            << i;
      }
    }
    if (step == 3) {
      // Dense momentum from u = 0: the update is the plain average.
      for (std::size_t i = 0; i < layers[0].numel; ++i) {
        float avg = 0.0f;
        for (int r = 0; r < p; ++r) avg += grad_value(r, step, 0, i);
        avg /= static_cast<float>(p);
        ASSERT_NEAR(buf.outs[0][i], avg, 1e-5f * (std::fabs(avg) + 1.0f)) << i;
      }
    }
  }
}

TEST(DgcMpi, StepWithNothingToSendCompletes) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const std::vector<LayerSpec> layers = model();
  auto x = make_dgc(comm, no_warmup(0.01, DgcSelection::kSampled));
  Buffers buf(layers);
  // All zero everywhere, then nonzero on the last rank only.
  for (int step = 0; step < 2; ++step) {
    for (auto& g : buf.grads) std::fill(g.begin(), g.end(), 0.0f);
    if (step == 1 && world_rank() == world_size() - 1) buf.grads[0][5] = 1.0f;
    for (auto& o : buf.outs) std::fill(o.begin(), o.end(), 3.0f);
    x->exchange(buf.grad_views, buf.out_views);
    EXPECT_EQ(dgc_of(*x).last_stats(2).sent, 0u);
    for (std::size_t l = 0; l < layers.size(); ++l) {
      for (std::size_t i = 0; i < layers[l].numel; ++i) {
        const float expect =
            (step == 1 && l == 0 && i == 5) ? 1.0f / static_cast<float>(world_size()) : 0.0f;
        ASSERT_EQ(buf.outs[l][i], expect) << "layer " << l << " element " << i << " step " << step;
      }
    }
  }
}

TEST(DgcMpi, NonFiniteFollowsPolicyOnEveryRank) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const std::vector<LayerSpec> layers = model();
  const bool bad_rank = world_rank() == world_size() - 1;
  for (std::size_t bad_layer : {std::size_t{0}, std::size_t{1}}) {  // sparse, dense
    auto x = make_dgc(comm, no_warmup(0.01, DgcSelection::kSampled));
    Buffers buf(layers);
    buf.fill(world_rank(), 0);
    if (bad_rank) buf.grads[bad_layer][3] = std::numeric_limits<float>::quiet_NaN();
    ErrorCode code{};
    try {
      x->exchange(buf.grad_views, buf.out_views);
    } catch (const Error& e) {
      code = e.code();
    }
    EXPECT_TRUE(all_ranks(code == ErrorCode::kNonFinite)) << "layer " << bad_layer;
    // The NaN never entered the state: the next clean step is finite everywhere.
    buf.fill(world_rank(), 1);
    x->exchange(buf.grad_views, buf.out_views);
    for (const auto& out : buf.outs)
      for (float v : out) ASSERT_TRUE(std::isfinite(v));
  }
  ExchangerOptions zero;
  zero.nonfinite = NonFinitePolicy::kZero;
  auto x = make_dgc(comm, no_warmup(0.01, DgcSelection::kSampled), zero);
  Buffers buf(layers);
  buf.fill(world_rank(), 0);
  if (bad_rank) buf.grads[0][3] = std::numeric_limits<float>::infinity();
  const StepStats& stats = x->exchange(buf.grad_views, buf.out_views);
  EXPECT_EQ(stats.nonfinite, 1u);
  for (const auto& out : buf.outs)
    for (float v : out) ASSERT_TRUE(std::isfinite(v));
}

TEST(DgcMpi, SaveRestoreContinuesBitwise) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const std::vector<LayerSpec> layers = model();
  DgcOptions o;  // sampled, warm-up by epoch
  o.density = 0.004;
  o.value_dtype = DType::kFloat16;
  auto a = make_dgc(comm, o);
  Buffers buf(layers);
  auto run = [&](Exchanger& x, int step) {
    dgc_of(x).set_epoch(step);
    buf.fill(world_rank(), step);
    x.exchange(buf.grad_views, buf.out_views);
    return buf.outs;
  };
  for (int step = 0; step < 3; ++step) run(*a, step);
  const std::vector<std::byte> blob = a->compressor().save_state();
  std::vector<std::vector<std::vector<float>>> first;
  for (int step = 3; step < 6; ++step) first.push_back(run(*a, step));
  auto b = make_dgc(comm, o);
  b->compressor().load_state(blob);
  for (int step = 3; step < 6; ++step) {
    ASSERT_TRUE(all_ranks(run(*b, step) == first[static_cast<std::size_t>(step - 3)]))
        << "step " << step;
  }
  // The blobs differ only in the step field: a new Exchanger counts steps from 0.
  bool same = true;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    same = same && std::ranges::equal(dgc_of(*a).momentum(l), dgc_of(*b).momentum(l)) &&
           std::ranges::equal(dgc_of(*a).residual(l), dgc_of(*b).residual(l));
  }
  EXPECT_TRUE(all_ranks(same));
}

TEST(DgcMpi, SettingsMustAgreeAcrossRanks) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  DgcOptions o = no_warmup(world_rank() == 0 ? 0.01 : 0.02, DgcSelection::kSampled);
  ErrorCode code{};
  try {
    make_dgc(comm, o);
  } catch (const Error& e) {
    code = e.code();
  }
  EXPECT_TRUE(all_ranks(code == ErrorCode::kSizeMismatch));
}

}  // namespace
}  // namespace gradcomm
