// The exchange cost model (docs/algorithms/sparse-allreduce.md, "Choosing"): its formulas,
// the plan it makes from them, and measure_links giving every rank the same model.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "gradcomm/error.h"
#include "gradcomm/exchange_plan.h"
#include "gradcomm/thread_communicator.h"

namespace gradcomm {
namespace {

LinkModel flat_links(int p, double alpha, double beta, double per_element) {
  LinkModel m;
  m.world = {alpha, beta};
  m.seconds_per_element = per_element;
  m.world_size = p;
  m.hosts = p;
  m.ranks_per_host = 1;
  return m;
}

LayerCost sparse_layer(std::size_t n, double density) {
  LayerCost c;
  c.name = "w";
  c.numel = n;
  c.sparse_capable = true;
  c.k = static_cast<std::size_t>(std::ceil(density * static_cast<double>(n)));
  return c;
}

// The table of the docs, written out for one flat world: a change of the model must
// change the docs with it.
TEST(CostModel, FlatPredictionsAreTheDocumentedFormulas) {
  const double a = 50e-6, b = 1e-9, c = 0.5e-9;
  const int p = 4;
  const LinkModel m = flat_links(p, a, b, c);
  const LayerCost layer = sparse_layer(1'000'000, 0.001);
  const double n = 1e6, k = 1000, entry = 8, d = 4;
  const double dense = 2 * (p - 1) * a + 2.0 * (p - 1) / p * n * d * b + 2 * c * n;
  const double allgather = (p - 1) * (a + (4 + k * entry) * b) + c * (3 * n + p * k);
  EXPECT_DOUBLE_EQ(predict_layer_seconds(m, layer, SparseExchange::kDense, false, 0), dense);
  EXPECT_DOUBLE_EQ(predict_layer_seconds(m, layer, SparseExchange::kAllgather, false, 0),
                   allgather);
  // Without the histogram (refresh 0): counts, entries, kept sums, each a pairwise exchange.
  const double share = (p - 1.0) / p;
  const double reduce_scatter =
      ((p - 1) * a + 8.0 * p * b) + ((p - 1) * a + k * entry * share * b) +
      ((p - 1) * a + 8.0 * k * (p - 1) / p * b) + c * (3 * n + k * (std::log2(k) + 2));
  EXPECT_NEAR(predict_layer_seconds(m, layer, SparseExchange::kReduceScatter, false, 0),
              reduce_scatter, 1e-15 * reduce_scatter + 1e-18);
}

// The reason the sparse allreduce exists: the allgather's time grows with the ranks, the
// reduce-scatter's bytes do not, so past some p it is the faster one.
TEST(CostModel, ReduceScatterOvertakesTheAllgatherAsRanksGrow) {
  const LayerCost layer = sparse_layer(25'000'000, 0.001);
  double previous_allgather = 0;
  bool overtaken = false;
  for (int p : {2, 4, 16, 64, 256, 1024}) {
    const LinkModel m = flat_links(p, 5e-6, 1.0 / 1.25e9, 0.3e-9);
    const double ag = predict_layer_seconds(m, layer, SparseExchange::kAllgather, false, 100);
    const double rs = predict_layer_seconds(m, layer, SparseExchange::kReduceScatter, false, 100);
    EXPECT_GT(ag, previous_allgather) << p << " ranks";
    previous_allgather = ag;
    if (p >= 64) {
      EXPECT_LT(rs, ag) << p << " ranks";
      overtaken = true;
    }
  }
  EXPECT_TRUE(overtaken);
}

// The column of ExchangePlan's per-layer seconds (dense, allgather, reduce_scatter).
std::size_t option_index(SparseExchange e) {
  switch (e) {
    case SparseExchange::kDense:
      return 0;
    case SparseExchange::kAllgather:
      return 1;
    case SparseExchange::kReduceScatter:
      return 2;
  }
  return 0;
}

TEST(CostModel, PlanTakesTheFastestOptionOrTheForcedOne) {
  const LinkModel m = flat_links(8, 20e-6, 1.0 / 1.25e8, 0.3e-9);  // 1 Gbit/s
  LayerCost bias;
  bias.name = "bias";
  bias.numel = 512;
  bias.sparse_capable = false;
  const std::vector<LayerCost> layers = {sparse_layer(4'000'000, 0.001), bias,
                                         sparse_layer(10'000, 1.0)};
  const ExchangePlan plan =
      plan_exchange(m, layers, ExchangeChoice::kAuto, Hierarchy::kFlat, false, 100);
  ASSERT_EQ(plan.exchange.size(), layers.size());
  EXPECT_FALSE(plan.hierarchical);
  double total = 0;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const auto& s = plan.flat_seconds[l];
    const std::size_t chosen = option_index(plan.exchange[l]);
    if (layers[l].sparse_capable) {
      for (double option : s) EXPECT_LE(s[chosen], option) << "layer " << l;
    } else {
      EXPECT_EQ(plan.exchange[l], SparseExchange::kDense) << "a layer that cannot go sparse";
    }
    total += s[chosen];
  }
  EXPECT_DOUBLE_EQ(plan.predicted_seconds, total);
  // A large layer on a slow link goes sparse; a layer sent whole (density 1) stays dense.
  EXPECT_NE(plan.exchange[0], SparseExchange::kDense);
  EXPECT_EQ(plan.exchange[2], SparseExchange::kDense);

  const ExchangePlan forced =
      plan_exchange(m, layers, ExchangeChoice::kReduceScatter, Hierarchy::kFlat, false, 100);
  EXPECT_EQ(forced.exchange[0], SparseExchange::kReduceScatter);
  EXPECT_EQ(forced.exchange[1], SparseExchange::kDense);
  EXPECT_EQ(forced.exchange[2], SparseExchange::kReduceScatter);
}

LinkModel hosts_links(double inter_beta, double intra_beta, double per_element) {
  LinkModel m = flat_links(8, 20e-6, inter_beta, per_element);
  m.hosts = 2;
  m.ranks_per_host = 4;
  m.inter = {50e-6, inter_beta};
  m.intra = {2e-6, intra_beta};
  return m;
}

// Hierarchical only where its total is smaller: a dense layer over a slow link between
// hosts with fast memory inside them goes hierarchical; with memory as slow as the link,
// it stays flat. A forced topology is kept, and refused without host communicators.
TEST(CostModel, HierarchicalOnlyWhereItAddsUpToLess) {
  LayerCost dense_only = sparse_layer(25'000'000, 0.001);
  dense_only.sparse_capable = false;
  const std::vector<LayerCost> layers = {dense_only};
  const ExchangePlan fast_memory =
      plan_exchange(hosts_links(1.0 / 1.25e8, 1.0 / 20e9, 0.1e-9), layers, ExchangeChoice::kAuto,
                    Hierarchy::kAuto, true, 100);
  EXPECT_TRUE(fast_memory.hierarchical);
  EXPECT_LT(fast_memory.hierarchical_total, fast_memory.flat_total);
  const ExchangePlan slow_memory =
      plan_exchange(hosts_links(1.0 / 1.25e10, 1.0 / 1.25e8, 0.1e-9), layers, ExchangeChoice::kAuto,
                    Hierarchy::kAuto, true, 100);
  EXPECT_FALSE(slow_memory.hierarchical);
  EXPECT_LE(slow_memory.flat_total, slow_memory.hierarchical_total);
  const ExchangePlan forced =
      plan_exchange(hosts_links(1.0 / 1.25e10, 1.0 / 1.25e8, 0.1e-9), layers, ExchangeChoice::kAuto,
                    Hierarchy::kHierarchical, true, 100);
  EXPECT_TRUE(forced.hierarchical);
  EXPECT_THROW(plan_exchange(flat_links(8, 1e-6, 1e-9, 1e-9), layers, ExchangeChoice::kAuto,
                             Hierarchy::kHierarchical, false, 100),
               Error);
}

bool same_bits(double x, double y) { return std::memcmp(&x, &y, sizeof x) == 0; }

bool same_model(const LinkModel& x, const LinkModel& y) {
  return same_bits(x.world.alpha, y.world.alpha) && same_bits(x.world.beta, y.world.beta) &&
         same_bits(x.intra.alpha, y.intra.alpha) && same_bits(x.intra.beta, y.intra.beta) &&
         same_bits(x.inter.alpha, y.inter.alpha) && same_bits(x.inter.beta, y.inter.beta) &&
         same_bits(x.seconds_per_element, y.seconds_per_element) && x.world_size == y.world_size &&
         x.hosts == y.hosts && x.ranks_per_host == y.ranks_per_host;
}

// Each rank times its own samples, which differ; the plan must not: every rank ends with
// the same model, bit for bit (the median over ranks of every number).
TEST(MeasureLinks, EveryRankGetsTheSameModel) {
  for (int p : {1, 3, 4}) {
    std::vector<LinkModel> models(static_cast<std::size_t>(p));
    ThreadCommunicatorOptions options;
    options.ranks_per_host = p == 4 ? 2 : 0;
    ThreadCommunicator::run(
        p,
        [&](ThreadCommunicator& comm) {
          LinkMeasureOptions sizes;
          sizes.bandwidth_bytes = 64 << 10;  // small: this is about agreement, not speed
          sizes.local_bandwidth_bytes = 128 << 10;
          sizes.repeats = 3;
          if (p == 4) {
            std::unique_ptr<Communicator> local = comm.split_shared();
            std::unique_ptr<Communicator> cross = comm.split(local->rank(), comm.rank());
            models[comm.rank()] = measure_links(comm, local.get(), cross.get(), sizes);
          } else {
            models[comm.rank()] = measure_links(comm, nullptr, nullptr, sizes);
          }
        },
        options);
    for (const LinkModel& m : models) {
      EXPECT_TRUE(same_model(m, models[0])) << p << " ranks";
      EXPECT_EQ(m.world_size, p);
      EXPECT_GE(m.world.alpha, 0.0);
      EXPECT_GE(m.world.beta, 0.0);
      EXPECT_GT(m.seconds_per_element, 0.0);
    }
    EXPECT_EQ(models[0].hosts, p == 4 ? 2 : p);
    EXPECT_EQ(models[0].ranks_per_host, p == 4 ? 2 : 1);
  }
}

// Refused before the first collective, so every rank gets the error and none waits.
TEST(MeasureLinks, RefusesNoSamplesAndHalfAHost) {
  std::mutex mutex;
  int refused = 0;
  ThreadCommunicator::run(2, [&](ThreadCommunicator& comm) {
    LinkMeasureOptions none;
    none.repeats = 0;
    try {
      measure_links(comm, nullptr, nullptr, none);
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("repeats must be at least 1"), std::string::npos)
          << e.what();
      std::lock_guard<std::mutex> lock(mutex);
      ++refused;
    }
    EXPECT_THROW(measure_links(comm, &comm, nullptr), Error);
  });
  EXPECT_EQ(refused, 2);
}

}  // namespace
}  // namespace gradcomm
