// DGC through the Exchanger with the sparse allreduce (SparseExchange::kReduceScatter),
// over a real MpiCommunicator on 2 to 8 ranks. Gradients are a pure function of (rank,
// step, layer, element), so each rank replays every rank's DGC state and the exchange
// itself: the reference below is written out step by step, without the library's code.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <vector>

#include "gradcomm/dgc.h"
#include "gradcomm/exchanger.h"
#include "gradcomm/mpi_communicator.h"
#include "gradcomm/sparse_allreduce.h"
#include "mpi/gradient_model.h"
#include "mpi/mpi_test_util.h"
#include "unit/dgc_reference.h"

namespace gradcomm {
namespace {

using testing::all_ranks;
using testing::Buffers;
using testing::grad_value;
using testing::reference_topk;
using testing::same_on_all_ranks;
using testing::world_rank;
using testing::world_size;

// A conv weight of prime size, a bias (1-D: dense), a fully connected weight, and a layer
// so small that k = 1 < p and most regions are empty.
std::vector<LayerSpec> model() {
  return {{"conv", 4099, 4, false}, {"bias", 37, 1, false}, {"fc", 2000, 2, false}, {"tiny", 5, 2, false}};
}
constexpr std::size_t kSparseLayers[] = {0, 2, 3};

DgcOptions reduce_scatter(double density, DgcSelection selection) {
  DgcOptions o;
  o.density = density;
  o.warmup_densities = {};
  o.selection = selection;
  o.exchange = SparseExchange::kReduceScatter;
  return o;
}

std::unique_ptr<Exchanger> make(MpiCommunicator& comm, const DgcOptions& o, ExchangerOptions xo = {}) {
  return std::make_unique<Exchanger>(comm, std::make_unique<DgcCompressor>(o), model(), xo);
}

DgcCompressor& dgc_of(Exchanger& x) { return dynamic_cast<DgcCompressor&>(x.compressor()); }

TEST(SparseExchange, ExactSelectionMatchesTheReference) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const std::vector<LayerSpec> layers = model();
  const int p = world_size();
  ExchangerOptions xo;
  xo.region_refresh_steps = 2;  // refreshed at steps 0, 2, 4; kept at 1, 3, 5
  auto x = make(comm, reduce_scatter(0.01, DgcSelection::kExact), xo);
  Buffers buf(layers);
  struct RankState {
    std::vector<float> u, v;
  };
  std::vector<std::vector<RankState>> ref(static_cast<std::size_t>(p));
  for (auto& r : ref)
    for (const LayerSpec& l : layers) r.push_back({std::vector<float>(l.numel, 0.0f), std::vector<float>(l.numel, 0.0f)});
  std::map<std::size_t, SparseRegions> regions;
  for (int step = 0; step < 6; ++step) {
    buf.fill(world_rank(), step);
    const StepStats& stats = x->exchange(buf.grad_views, buf.out_views);
    EXPECT_GT(stats.collectives, 0u);
    for (std::size_t l : kSparseLayers) {
      ASSERT_EQ(x->compressor().wire(l).collective, Collective::kSparseAllreduce) << l;
      const std::size_t n = layers[l].numel, k = dgc_of(*x).k(l);
      // Each rank's local top-k, taken out of its v.
      std::vector<std::vector<std::uint32_t>> picked(static_cast<std::size_t>(p));
      std::vector<std::vector<float>> sent(static_cast<std::size_t>(p));
      std::vector<std::uint32_t> histogram(sparse_histogram_bins(n, p), 0);
      for (int r = 0; r < p; ++r) {
        RankState& s = ref[static_cast<std::size_t>(r)][l];
        for (std::size_t i = 0; i < n; ++i) {
          s.u[i] = 0.9f * s.u[i] + grad_value(r, step, l, i);
          s.v[i] = s.v[i] + s.u[i];
        }
        picked[r] = reference_topk(s.v, k);
        for (std::uint32_t i : picked[r]) {
          sent[r].push_back(s.v[i]);
          s.v[i] = 0.0f;
        }
        add_to_sparse_histogram(picked[r], n, histogram);
      }
      if (step % 2 == 0) regions[l] = balanced_sparse_regions(histogram, n, k, p);
      const SparseRegions& reg = regions[l];
      // Sums in rank order, then each region's quota of the largest, ties to the lower index.
      std::map<std::uint32_t, float> sums;
      for (int r = 0; r < p; ++r) {
        for (std::size_t j = 0; j < picked[r].size(); ++j) {
          auto [it, fresh] = sums.try_emplace(picked[r][j], sent[r][j]);
          if (!fresh) it->second += sent[r][j];
        }
      }
      std::vector<float> expect(n, 0.0f);
      std::vector<char> kept(n, 0);
      for (int owner = 0; owner < p; ++owner) {
        std::vector<std::pair<std::uint32_t, float>> in;
        for (const auto& [i, s] : sums)
          if (i >= reg.bounds[owner] && i < reg.bounds[owner + 1]) in.emplace_back(i, s);
        std::stable_sort(in.begin(), in.end(),
                         [](const auto& a, const auto& b) { return std::fabs(a.second) > std::fabs(b.second); });
        in.resize(std::min(in.size(), reg.quotas[owner]));
        for (const auto& [i, s] : in) {
          expect[i] = s * (1.0f / static_cast<float>(p));
          kept[i] = 1;
        }
      }
      for (int r = 0; r < p; ++r) {
        RankState& s = ref[static_cast<std::size_t>(r)][l];
        for (std::size_t j = 0; j < picked[r].size(); ++j) {
          const std::uint32_t i = picked[r][j];
          if (kept[i]) {
            s.u[i] = 0.0f;  // momentum masking where the value went out
          } else {
            s.v[i] += sent[r][j];  // dropped by the selection: back into the residual
          }
        }
      }
      const RankState& mine = ref[static_cast<std::size_t>(world_rank())][l];
      ASSERT_TRUE(std::ranges::equal(mine.v, dgc_of(*x).residual(l))) << "residual of layer " << l << " step " << step;
      ASSERT_TRUE(std::ranges::equal(mine.u, dgc_of(*x).momentum(l))) << "momentum of layer " << l << " step " << step;
      for (std::size_t i = 0; i < n; ++i) {
        ASSERT_EQ(std::bit_cast<std::uint32_t>(buf.outs[l][i]), std::bit_cast<std::uint32_t>(expect[i]))
            << "layer " << l << " element " << i << " step " << step << ": " << buf.outs[l][i] << " vs " << expect[i];
      }
    }
  }
}

TEST(SparseExchange, NothingLostAndBitwiseIdenticalAcrossRanks) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const std::vector<LayerSpec> layers = model();
  const int p = world_size();
  for (DType values : {DType::kFloat32, DType::kFloat16}) {
    DgcOptions o = reduce_scatter(0.002, DgcSelection::kSampled);
    o.warmup_densities = {0.25, 0.0625, 0.015625, 0.004};  // the paper's, by the step
    o.steps_per_epoch = 2;
    o.value_dtype = values;
    o.dense_dtype = values;
    o.nesterov = values == DType::kFloat16;
    ExchangerOptions xo;
    xo.region_refresh_steps = 3;
    xo.bucket_bytes = values == DType::kFloat16 ? 1024 : 4u << 20;  // a group per layer, or one for all
    auto x = make(comm, o, xo);
    DgcCompressor& c = dgc_of(*x);
    Buffers buf(layers);
    for (int step = 0; step < 12; ++step) {
      buf.fill(world_rank(), step);
      // What enters v this step: (Nesterov) m*(u + g) + g, or (plain) m*u + g.
      std::vector<std::vector<float>> balance(layers.size());
      for (std::size_t l : kSparseLayers) {
        balance[l] = testing::dgc_ledger_input(c.momentum(l), c.residual(l), buf.grads[l], o.nesterov);
      }
      const StepStats& stats = x->exchange(buf.grad_views, buf.out_views);
      EXPECT_FALSE(stats.skipped);
      for (std::size_t l = 0; l < layers.size(); ++l) {
        ASSERT_TRUE(same_on_all_ranks(buf.outs[l])) << "layer " << l << " step " << step;
      }
      // Summed over ranks: accumulated input - residual = what went out = p * update.
      for (std::size_t l : kSparseLayers) {
        if (c.wire(l).collective != Collective::kSparseAllreduce) continue;
        const auto v = c.residual(l);
        std::vector<float> out(layers[l].numel), scale(layers[l].numel);
        for (std::size_t i = 0; i < out.size(); ++i) {
          out[i] = balance[l][i] - v[i];
          scale[i] = std::fabs(balance[l][i]) + std::fabs(v[i]);
        }
        MPI_Allreduce(MPI_IN_PLACE, out.data(), static_cast<int>(out.size()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        MPI_Allreduce(MPI_IN_PLACE, scale.data(), static_cast<int>(scale.size()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        for (std::size_t i = 0; i < out.size(); ++i) {
          const float got = buf.outs[l][i] * static_cast<float>(p);
          ASSERT_NEAR(got, out[i], 4e-6f * scale[i] + 1e-6f)
              << "layer " << l << " element " << i << " step " << step << " values " << dtype_name(values);
        }
      }
    }
  }
}

TEST(SparseExchange, SkippedStepGivesEverythingBack) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const std::vector<LayerSpec> layers = model();
  ExchangerOptions xo;
  xo.nonfinite = NonFinitePolicy::kSkipStep;
  auto x = make(comm, reduce_scatter(0.01, DgcSelection::kExact), xo);
  DgcCompressor& c = dgc_of(*x);
  Buffers buf(layers);
  buf.fill(world_rank(), 0);
  x->exchange(buf.grad_views, buf.out_views);
  // Step 1 meets a NaN on the last rank: every rank skips, and v holds everything.
  buf.fill(world_rank(), 1);
  std::vector<std::vector<float>> expect_v(layers.size());
  for (std::size_t l : kSparseLayers) {
    const auto u = c.momentum(l);
    const auto v = c.residual(l);
    for (std::size_t i = 0; i < layers[l].numel; ++i) expect_v[l].push_back(v[i] + (0.9f * u[i] + buf.grads[l][i]));
  }
  if (world_rank() == world_size() - 1) buf.grads[2][7] = std::numeric_limits<float>::quiet_NaN();
  const StepStats& stats = x->exchange(buf.grad_views, buf.out_views);
  EXPECT_TRUE(stats.skipped);
  EXPECT_GE(stats.nonfinite, 1u);
  for (std::size_t l : kSparseLayers) {
    const auto v = c.residual(l);
    for (std::size_t i = 0; i < layers[l].numel; ++i) {
      if (l == 2 && i == 7 && world_rank() == world_size() - 1) continue;  // the NaN counts as 0 there
      ASSERT_EQ(v[i], expect_v[l][i]) << "layer " << l << " element " << i;
    }
    for (float out : buf.outs[l]) ASSERT_EQ(out, 0.0f);
  }
}

TEST(SparseExchange, RegionsAgreeAndResumeBitwise) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const std::vector<LayerSpec> layers = model();
  DgcOptions o = reduce_scatter(0.004, DgcSelection::kSampled);
  o.value_dtype = DType::kFloat16;
  ExchangerOptions xo;
  xo.region_refresh_steps = 4;
  auto a = make(comm, o, xo);
  Buffers buf(layers);
  auto run = [&](Exchanger& x, int step) {
    buf.fill(world_rank(), step);
    x.exchange(buf.grad_views, buf.out_views);
    return buf.outs;
  };
  for (int step = 0; step < 6; ++step) run(*a, step);
  const std::vector<std::byte> state = a->compressor().save_state();
  const std::vector<std::byte> regions = a->engine().save_sparse_regions();
  EXPECT_TRUE(same_on_all_ranks(regions.data(), regions.size()));
  std::vector<std::vector<std::vector<float>>> first;
  for (int step = 6; step < 10; ++step) first.push_back(run(*a, step));
  auto b = make(comm, o, xo);
  b->compressor().load_state(state);
  b->engine().load_sparse_regions(regions);
  b->restore_step(6);
  for (int step = 6; step < 10; ++step) {
    ASSERT_TRUE(all_ranks(run(*b, step) == first[static_cast<std::size_t>(step - 6)])) << "step " << step;
  }
}

TEST(SparseExchange, FullDensityEqualsDenseMomentumSgd) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const std::vector<LayerSpec> layers = model();
  const int p = world_size();
  // At density 1 with every element kept, the sparse allreduce sums everything: momentum
  // SGD on the average (without masking, which would reset u every step).
  DgcOptions o = reduce_scatter(1.0, DgcSelection::kExact);
  o.dense_fallback = false;
  o.momentum_masking = false;
  auto x = make(comm, o);
  Buffers buf(layers);
  std::vector<std::vector<float>> u;
  for (const LayerSpec& l : layers) u.emplace_back(l.numel, 0.0f);
  for (int step = 0; step < 3; ++step) {
    buf.fill(world_rank(), step);
    x->exchange(buf.grad_views, buf.out_views);
    for (std::size_t l : kSparseLayers) {
      for (std::size_t i = 0; i < layers[l].numel; ++i) {
        float avg = 0.0f;
        for (int r = 0; r < p; ++r) avg += grad_value(r, step, l, i);
        avg /= static_cast<float>(p);
        u[l][i] = 0.9f * u[l][i] + avg;
        ASSERT_NEAR(buf.outs[l][i], u[l][i], 1e-5f * (1 + std::fabs(u[l][i]))) << l << " " << i << " step " << step;
      }
    }
  }
}

}  // namespace
}  // namespace gradcomm
