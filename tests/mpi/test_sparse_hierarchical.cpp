// The hierarchical exchange and the plan, over real MPI communicators (2 to 8 ranks). Hosts
// are blocks of 2 consecutive ranks where the world is even (np 2: one host of 2; np 4: 2
// x 2; np 8: 4 x 2), of 1 rank where it is odd; with GRADCOMM_TEST_SHARED_HOSTS set (CTest
// mpi.sparse_hierarchical.netem_2x2, under bench/netem/run) they are the ranks sharing
// memory: the emulated hosts.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <limits>
#include <memory>
#include <vector>

#include "core/float16.h"
#include "gradcomm/checkpoint.h"
#include "gradcomm/dense.h"
#include "gradcomm/dgc.h"
#include "gradcomm/exchanger.h"
#include "gradcomm/host_communicators.h"
#include "gradcomm/mpi_communicator.h"
#include "mpi/gradient_model.h"
#include "mpi/mpi_test_util.h"

namespace gradcomm {
namespace {

using testing::all_ranks;
using testing::Buffers;
using testing::grad_value;
using testing::same_on_all_ranks;
using testing::world_rank;
using testing::world_size;

int ranks_per_host() {
  if (std::getenv("GRADCOMM_TEST_SHARED_HOSTS")) return 0;  // the MPI runtime's hosts
  return world_size() % 2 == 0 ? 2 : 1;
}

// Layers of odd sizes (shards differ by one), smaller than the hosts' ranks, a bias.
std::vector<LayerSpec> model() {
  return {{"conv", 4099, 4, false}, {"bias", 37, 1, false}, {"fc", 2001, 2, false}, {"tiny", 1, 2, false}};
}

ExchangerOptions hierarchical(std::size_t bucket = 4u << 20) {
  ExchangerOptions o;
  o.hierarchy = Hierarchy::kHierarchical;
  o.bucket_bytes = bucket;
  return o;
}

// Under bench/netem/run --hosts H --ranks-per-host R, the shared-memory split must find
// the emulated hosts: R consecutive ranks each.
TEST(Hierarchical, HostsAreTheEmulatedHosts) {
  const char* link = std::getenv("GRADCOMM_NETEM_LINK");
  if (!std::getenv("GRADCOMM_TEST_SHARED_HOSTS") || !link) GTEST_SKIP() << "not on emulated hosts";
  const std::string text = link;
  const std::size_t at = text.find("ranks_per_host=");
  ASSERT_NE(at, std::string::npos) << text;
  const int R = std::atoi(text.c_str() + at + 15);
  MpiCommunicator world(MPI_COMM_WORLD);
  MpiHostCommunicators hosts(world, 0);
  EXPECT_EQ(hosts.local().size(), R) << text;
  EXPECT_EQ(hosts.local().rank(), world_rank() % R);
  EXPECT_EQ(hosts.cross().size(), world_size() / R);
  EXPECT_EQ(hosts.cross().rank(), world_rank() / R);
}

TEST(Hierarchical, DenseIsTheAverageOnEveryRank) {
  MpiCommunicator world(MPI_COMM_WORLD);
  MpiHostCommunicators hosts(world, ranks_per_host());
  const std::vector<LayerSpec> layers = model();
  for (std::size_t bucket : {std::size_t{64}, std::size_t{4} << 20}) {
    Exchanger x(world, hosts.get(), std::make_unique<DenseCompressor>(), layers, hierarchical(bucket));
    ASSERT_TRUE(x.hierarchical());
    Buffers buf(layers);
    buf.fill(world_rank(), 0);
    const StepStats& stats = x.exchange(buf.grad_views, buf.out_views);
    EXPECT_EQ(stats.local_wire_bytes > 0, hosts.local().size() > 1);
    for (std::size_t l = 0; l < layers.size(); ++l) {
      for (std::size_t i = 0; i < layers[l].numel; ++i) {
        double avg = 0;
        for (int r = 0; r < world_size(); ++r) avg += grad_value(r, 0, l, i);
        avg /= world_size();
        ASSERT_NEAR(buf.outs[l][i], avg, 1e-5 * (1 + std::fabs(avg))) << l << " " << i << " bucket " << bucket;
      }
      EXPECT_TRUE(same_on_all_ranks(buf.outs[l])) << l;
    }
  }
}

TEST(Hierarchical, HalfPrecisionGradientsComeBackInTheirDtype) {
  MpiCommunicator world(MPI_COMM_WORLD);
  MpiHostCommunicators hosts(world, ranks_per_host());
  std::vector<LayerSpec> layers = {{"a", 1001, 2}, {"b", 64, 1}};
  layers[0].dtype = DType::kFloat16;
  layers[1].dtype = DType::kBFloat16;
  Exchanger x(world, hosts.get(), std::make_unique<DenseCompressor>(), layers, hierarchical());
  std::vector<std::vector<std::uint16_t>> grads(2), outs(2);
  std::vector<TensorView> g, o;
  for (std::size_t l = 0; l < 2; ++l) {
    grads[l].resize(layers[l].numel);
    outs[l].resize(layers[l].numel);
    for (std::size_t i = 0; i < layers[l].numel; ++i) {
      const float v = 0.25f * static_cast<float>((i + static_cast<std::size_t>(world_rank())) % 8);
      grads[l][i] = l == 0 ? float_to_half(v) : float_to_bfloat16(v);
    }
    g.emplace_back(grads[l].data(), layers[l].numel, layers[l].dtype);
    o.emplace_back(outs[l].data(), layers[l].numel, layers[l].dtype);
  }
  x.exchange(g, o);
  for (std::size_t l = 0; l < 2; ++l) {
    for (std::size_t i = 0; i < layers[l].numel; ++i) {
      float avg = 0;
      for (int r = 0; r < world_size(); ++r) avg += 0.25f * static_cast<float>((i + static_cast<std::size_t>(r)) % 8);
      avg /= static_cast<float>(world_size());
      const float got = l == 0 ? half_to_float(outs[l][i]) : bfloat16_to_float(outs[l][i]);
      ASSERT_NEAR(got, avg, 0.01f * (1 + avg)) << l << " " << i;
    }
    EXPECT_TRUE(same_on_all_ranks(outs[l]));
  }
}

// With DGC across hosts, per shard: what entered the shard's v (from the host's average
// gradient) minus what is left, summed over hosts, is H times the update there.
TEST(Hierarchical, DgcLosesNothingPerShard) {
  MpiCommunicator world(MPI_COMM_WORLD);
  MpiHostCommunicators hosts(world, ranks_per_host());
  const std::vector<LayerSpec> layers = model();
  const int R = hosts.local().size(), H = hosts.cross().size(), me = hosts.local().rank();
  for (SparseExchange exchange : {SparseExchange::kReduceScatter, SparseExchange::kAllgather}) {
    DgcOptions o;
    o.density = 0.01;
    o.warmup_densities = {0.25};
    o.steps_per_epoch = 2;
    o.exchange = exchange;
    ExchangerOptions xo = hierarchical(8192);
    xo.region_refresh_steps = 2;
    Exchanger x(world, hosts.get(), std::make_unique<DgcCompressor>(o), layers, xo);
    auto& c = dynamic_cast<DgcCompressor&>(x.compressor());
    Buffers buf(layers);
    for (int step = 0; step < 6; ++step) {
      buf.fill(world_rank(), step);
      std::vector<std::vector<float>> balance(layers.size());
      for (std::size_t l : {std::size_t{0}, std::size_t{2}}) {
        const std::size_t n = layers[l].numel, begin = n * me / R, size = n * (me + 1) / R - begin;
        const auto u = c.momentum(l);
        const auto v = c.residual(l);
        ASSERT_EQ(v.size(), size);
        for (std::size_t e = 0; e < size; ++e) {
          // The host's average, summed in local rank order, as the exchange does.
          const int first = world_rank() - me;
          float g = grad_value(first, step, l, begin + e);
          for (int r = 1; r < R; ++r) g += grad_value(first + r, step, l, begin + e);
          g *= 1.0f / static_cast<float>(R);
          balance[l].push_back(v[e] + 0.9f * u[e] + g);
        }
      }
      x.exchange(buf.grad_views, buf.out_views);
      for (std::size_t l = 0; l < layers.size(); ++l) ASSERT_TRUE(same_on_all_ranks(buf.outs[l])) << l << " " << step;
      for (std::size_t l : {std::size_t{0}, std::size_t{2}}) {
        if (!c.is_sparse(l)) continue;
        const std::size_t n = layers[l].numel, begin = n * me / R;
        const auto v = c.residual(l);
        std::vector<float> sent(v.size()), scale(v.size());
        for (std::size_t e = 0; e < v.size(); ++e) {
          sent[e] = balance[l][e] - v[e];
          scale[e] = std::fabs(balance[l][e]) + std::fabs(v[e]);
        }
        MPI_Allreduce(MPI_IN_PLACE, sent.data(), static_cast<int>(sent.size()), MPI_FLOAT, MPI_SUM, hosts.cross().comm());
        MPI_Allreduce(MPI_IN_PLACE, scale.data(), static_cast<int>(scale.size()), MPI_FLOAT, MPI_SUM,
                      hosts.cross().comm());
        for (std::size_t e = 0; e < v.size(); ++e) {
          ASSERT_NEAR(buf.outs[l][begin + e] * static_cast<float>(H), sent[e], 4e-6f * scale[e] + 1e-6f)
              << sparse_exchange_name(exchange) << " layer " << l << " element " << begin + e << " step " << step;
        }
      }
    }
  }
}

TEST(Hierarchical, NonFiniteOnOneRankDecidesAlikeEverywhere) {
  MpiCommunicator world(MPI_COMM_WORLD);
  MpiHostCommunicators hosts(world, ranks_per_host());
  const std::vector<LayerSpec> layers = model();
  const bool bad = world_rank() == world_size() - 1;
  for (NonFinitePolicy policy : {NonFinitePolicy::kError, NonFinitePolicy::kSkipStep}) {
    ExchangerOptions xo = hierarchical();
    xo.nonfinite = policy;
    DgcOptions o;
    o.density = 0.01;
    o.warmup_densities = {};
    o.exchange = SparseExchange::kReduceScatter;
    Exchanger x(world, hosts.get(), std::make_unique<DgcCompressor>(o), layers, xo);
    Buffers buf(layers);
    buf.fill(world_rank(), 0);
    // In the first shard of "conv": on hosts of 2, another rank owns it than the bad one.
    if (bad) buf.grads[0][1] = std::numeric_limits<float>::quiet_NaN();
    ErrorCode code{};
    bool skipped = false;
    try {
      skipped = x.exchange(buf.grad_views, buf.out_views).skipped;
    } catch (const Error& e) {
      code = e.code();
    }
    if (policy == NonFinitePolicy::kError) {
      EXPECT_TRUE(all_ranks(code == ErrorCode::kNonFinite));
    } else {
      EXPECT_TRUE(all_ranks(skipped));
      for (const auto& out : buf.outs)
        for (float v : out) ASSERT_EQ(v, 0.0f);
    }
    buf.fill(world_rank(), 1);  // the next step is clean and finite everywhere
    x.exchange(buf.grad_views, buf.out_views);
    for (const auto& out : buf.outs)
      for (float v : out) ASSERT_TRUE(std::isfinite(v));
  }
}

TEST(Plan, AgreedForcedSavedAndResumedBitwise) {
  MpiCommunicator world(MPI_COMM_WORLD);
  MpiHostCommunicators hosts(world, ranks_per_host());
  const std::vector<LayerSpec> layers = model();
  DgcOptions o;
  o.density = 0.01;
  o.warmup_densities = {};
  for (Hierarchy h : {Hierarchy::kAuto, Hierarchy::kFlat, Hierarchy::kHierarchical}) {
    ExchangerOptions xo;
    xo.exchange = ExchangeChoice::kAuto;
    xo.hierarchy = h;
    xo.region_refresh_steps = 3;
    Exchanger x(world, hosts.get(), std::make_unique<DgcCompressor>(o), layers, xo);
    const std::vector<std::byte> plan = x.plan().save();
    EXPECT_TRUE(same_on_all_ranks(plan.data(), plan.size())) << hierarchy_name(h);
    ASSERT_EQ(x.plan().exchange.size(), layers.size());
    EXPECT_EQ(x.plan().exchange[1], SparseExchange::kDense);  // the bias cannot go sparse
    EXPECT_EQ(x.hierarchical(), h == Hierarchy::kHierarchical || (h == Hierarchy::kAuto && x.plan().hierarchical));
    EXPECT_GT(x.plan().predicted_seconds, 0.0);
    EXPECT_FALSE(x.plan().describe().empty());
  }
  // Forced: every layer that can go sparse takes the sparse allreduce.
  ExchangerOptions forced;
  forced.exchange = ExchangeChoice::kReduceScatter;
  forced.hierarchy = Hierarchy::kHierarchical;
  forced.region_refresh_steps = 3;
  auto make = [&] { return std::make_unique<Exchanger>(world, hosts.get(), std::make_unique<DgcCompressor>(o), layers, forced); };
  auto a = make();
  auto& dgc = dynamic_cast<DgcCompressor&>(a->compressor());
  EXPECT_EQ(dgc.layer_exchange(0), SparseExchange::kReduceScatter);
  EXPECT_EQ(dgc.layer_exchange(2), SparseExchange::kReduceScatter);
  Buffers buf(layers);
  auto run = [&](Exchanger& x, int step) {
    buf.fill(world_rank(), step);
    x.exchange(buf.grad_views, buf.out_views);
    return buf.outs;
  };
  for (int step = 0; step < 4; ++step) run(*a, step);
  const std::string prefix = "/tmp/gradcomm_test_plan_" + std::to_string(world_size());
  save_checkpoint(prefix, world, *a);
  std::vector<std::vector<std::vector<float>>> first;
  for (int step = 4; step < 8; ++step) first.push_back(run(*a, step));
  auto b = make();
  load_checkpoint(prefix, world, *b);
  EXPECT_EQ(b->step(), 4);
  EXPECT_EQ(b->plan().save(), a->plan().save());
  for (int step = 4; step < 8; ++step) {
    ASSERT_TRUE(all_ranks(run(*b, step) == first[static_cast<std::size_t>(step - 4)])) << "step " << step;
  }
  // A flat Exchanger refuses the hierarchical one's state.
  ExchangerOptions flat = forced;
  flat.hierarchy = Hierarchy::kFlat;
  Exchanger c(world, hosts.get(), std::make_unique<DgcCompressor>(o), layers, flat);
  EXPECT_THROW(c.load_exchange_state(a->save_exchange_state()), Error);
  std::remove(checkpoint_shard_path(prefix, world_rank()).c_str());
}

}  // namespace
}  // namespace gradcomm
