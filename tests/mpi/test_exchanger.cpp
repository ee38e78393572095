// The Exchanger's dense path on 2, 3 and 4 ranks: averaged in place, buckets fused,
// any submission order, fp16 on the wire, setup agreement.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "gradcomm/gradcomm.h"
#include "mpi/mpi_test_util.h"

namespace gradcomm {
namespace {

using testing::all_ranks;
using testing::same_on_all_ranks;

std::vector<LayerSpec> model_layers() {
  // Sizes include 0, 1, odd and a layer larger than the bucket.
  return {{"embed", 5000, 2}, {"empty", 0, 1},  {"fc1.w", 1001, 2}, {"fc1.b", 7, 1},
          {"one", 1, 1},      {"big", 300001, 2}, {"fc2.w", 640, 2}, {"fc2.b", 10, 1}};
}

float grad_value(int rank, std::size_t layer, std::size_t i) {
  return std::sin(static_cast<float>(i + 1) * 0.37f + static_cast<float>(layer)) * (rank + 1) * 0.01f;
}

struct Model {
  std::vector<std::vector<float>> grads, outs;
  std::vector<TensorView> grad_views, out_views;
  explicit Model(const std::vector<LayerSpec>& layers, int rank) {
    for (std::size_t l = 0; l < layers.size(); ++l) {
      grads.emplace_back(layers[l].numel);
      outs.emplace_back(layers[l].numel, -7.0f);
      for (std::size_t i = 0; i < layers[l].numel; ++i) grads[l][i] = grad_value(rank, l, i);
    }
    for (std::size_t l = 0; l < layers.size(); ++l) {
      grad_views.push_back(TensorView::of(std::span<float>(grads[l])));
      out_views.push_back(TensorView::of(std::span<float>(outs[l])));
    }
  }
};

// The average computed the way the Exchanger's reference semantics define it: the
// allreduced sum, scaled by 1/p.
std::vector<float> reference_average(MpiCommunicator& comm, const std::vector<float>& g) {
  std::vector<float> sum(g);
  comm.allreduce(TensorView::of(std::span<float>(sum)), TensorView::of(std::span<float>(sum)), ReduceOp::kSum)->wait();
  for (float& x : sum) x *= 1.0f / static_cast<float>(comm.size());
  return sum;
}

TEST(Exchanger, DenseAverageMatchesAllreduceAcrossBucketSizes) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const auto layers = model_layers();
  for (std::size_t bucket : {std::size_t{64}, std::size_t{4096}, std::size_t{1} << 22}) {
    Exchanger ex(comm, std::make_unique<DenseCompressor>(), layers, {.bucket_bytes = bucket});
    Model m(layers, comm.rank());
    const StepStats& stats = ex.exchange(m.grad_views, m.out_views);
    for (std::size_t l = 0; l < layers.size(); ++l) {
      const auto expected = reference_average(comm, m.grads[l]);
      ASSERT_EQ(m.outs[l].size(), expected.size());
      for (std::size_t i = 0; i < expected.size(); ++i)
        ASSERT_NEAR(m.outs[l][i], expected[i], 1e-7f * (1 + std::fabs(expected[i]))) << layers[l].name << "[" << i << "]";
      EXPECT_TRUE(same_on_all_ranks(m.outs[l])) << layers[l].name;
    }
    const std::size_t total = std::accumulate(layers.begin(), layers.end(), std::size_t{0},
                                              [](std::size_t a, const LayerSpec& l) { return a + l.numel; });
    EXPECT_EQ(stats.payload_bytes, total * 4);
    EXPECT_GE(stats.wire_bytes, comm.size() > 1 ? allreduce_wire_bytes(total * 4, comm.size()) : 0);
    if (bucket == 64) {
      EXPECT_GE(stats.collectives, layers.size() - 1);  // almost one bucket per layer
    }
    if (bucket == (std::size_t{1} << 22)) {
      EXPECT_LE(stats.collectives, 2u);  // everything fused
    }
  }
}

TEST(Exchanger, InPlaceAndManySteps) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const auto layers = model_layers();
  Exchanger ex(comm, std::make_unique<DenseCompressor>(), layers);
  for (int step = 0; step < 5; ++step) {
    Model m(layers, comm.rank() + step);
    const auto expected = reference_average(comm, m.grads[5]);
    ex.exchange(m.grad_views, m.grad_views);  // out aliases grad
    for (std::size_t i = 0; i < expected.size(); i += 997) ASSERT_NEAR(m.grads[5][i], expected[i], 1e-6f);
    EXPECT_TRUE(same_on_all_ranks(m.grads[5]));
  }
  EXPECT_EQ(ex.step(), 5);
}

TEST(Exchanger, SubmissionOrderDoesNotChangeTheResult) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const auto layers = model_layers();
  Exchanger ex(comm, std::make_unique<DenseCompressor>(), layers, {.bucket_bytes = 8192});
  Model forward(layers, comm.rank()), backward(layers, comm.rank());
  ex.exchange(backward.grad_views, backward.out_views);
  // Each rank submits in its own order (rotated by rank): groups still start in the
  // agreed order, so nothing hangs and the result is the same.
  ex.begin_step();
  for (std::size_t k = 0; k < layers.size(); ++k) {
    const std::size_t l = (k + static_cast<std::size_t>(comm.rank()) * 3) % layers.size();
    ex.submit(l, forward.grad_views[l], forward.out_views[l]);
  }
  ex.finish_step();
  for (std::size_t l = 0; l < layers.size(); ++l) EXPECT_EQ(forward.outs[l], backward.outs[l]) << l;
}

TEST(Exchanger, HalfOnTheWire) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const auto layers = model_layers();
  Exchanger ex(comm, std::make_unique<DenseCompressor>(DenseOptions{DType::kFloat16}), layers);
  Model m(layers, comm.rank());
  const StepStats& stats = ex.exchange(m.grad_views, m.out_views);
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const auto expected = reference_average(comm, m.grads[l]);
    for (std::size_t i = 0; i < expected.size(); ++i)
      ASSERT_NEAR(m.outs[l][i], expected[i], 2e-3f * std::fabs(expected[i]) + 1e-6f) << layers[l].name << i;
    EXPECT_TRUE(same_on_all_ranks(m.outs[l]));
  }
  const std::size_t total = std::accumulate(layers.begin(), layers.end(), std::size_t{0},
                                            [](std::size_t a, const LayerSpec& l) { return a + l.numel; });
  EXPECT_EQ(stats.payload_bytes, total * 2);
}

TEST(Exchanger, MisuseIsReported) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const auto layers = model_layers();
  Exchanger ex(comm, std::make_unique<DenseCompressor>(), layers);
  Model m(layers, comm.rank());
  EXPECT_THROW(ex.submit(0, m.grad_views[0], m.out_views[0]), Error);  // no begin_step
  ex.begin_step();
  EXPECT_THROW(ex.submit(99, m.grad_views[0], m.out_views[0]), Error);
  EXPECT_THROW(ex.submit(0, m.grad_views[2], m.out_views[2]), Error);  // wrong size
  for (std::size_t l = 0; l + 1 < layers.size(); ++l) ex.submit(l, m.grad_views[l], m.out_views[l]);
  EXPECT_THROW(ex.submit(0, m.grad_views[0], m.out_views[0]), Error);  // twice
  try {
    ex.finish_step();
    ADD_FAILURE() << "finish_step with a missing layer did not throw";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("'fc2.b'"), std::string::npos) << e.what();
  }
}

TEST(Exchanger, DifferentLayersFailOnEveryRankNamingTheLayer) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  if (comm.size() < 2) GTEST_SKIP() << "a disagreement needs two ranks";
  auto layers = model_layers();
  if (comm.rank() == comm.size() - 1) layers[2].numel += 1;  // "fc1.w" differs on the last rank
  bool threw = false;
  try {
    Exchanger ex(comm, std::make_unique<DenseCompressor>(), layers);
  } catch (const Error& e) {
    threw = true;
    EXPECT_EQ(e.code(), ErrorCode::kSizeMismatch);
    EXPECT_NE(e.message().find("layer 2"), std::string::npos) << e.what();
    EXPECT_NE(e.message().find("'fc1.w'"), std::string::npos) << e.what();
    EXPECT_NE(e.message().find("1001"), std::string::npos) << e.what();
    EXPECT_NE(e.message().find("1002"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(all_ranks(threw));
}

TEST(Exchanger, DifferentLayerCountsAndSettingsFailOnEveryRank) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  if (comm.size() < 2) GTEST_SKIP() << "a disagreement needs two ranks";
  auto layers = model_layers();
  if (comm.rank() == 0) layers.pop_back();
  bool threw = false;
  try {
    Exchanger ex(comm, std::make_unique<DenseCompressor>(), layers);
  } catch (const Error& e) {
    threw = true;
    EXPECT_NE(e.message().find("registered"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(all_ranks(threw));
  threw = false;
  const DType wire = comm.rank() == 0 ? DType::kFloat16 : DType::kFloat32;
  try {
    Exchanger ex(comm, std::make_unique<DenseCompressor>(DenseOptions{wire}), model_layers());
  } catch (const Error& e) {
    threw = true;
    // Names the setting and both values.
    EXPECT_NE(e.message().find("the settings differ between ranks: 'wire' is float16 on rank 0 and float32 on rank 1"),
              std::string::npos) << e.what();
  }
  EXPECT_TRUE(all_ranks(threw));
}

TEST(Exchanger, NonFiniteOnOneRankFailsOnEveryRank) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const auto layers = model_layers();
  Exchanger ex(comm, std::make_unique<DenseCompressor>(), layers);
  Model m(layers, comm.rank());
  if (comm.rank() == comm.size() - 1) m.grads[6][3] = std::nanf("");
  bool threw = false;
  try {
    ex.exchange(m.grad_views, m.out_views);
  } catch (const Error& e) {
    threw = true;
    EXPECT_EQ(e.code(), ErrorCode::kNonFinite);
    EXPECT_NE(e.message().find("fc2.w"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(all_ranks(threw));
  // The next step works again.
  Model clean(layers, comm.rank());
  ex.exchange(clean.grad_views, clean.out_views);
  EXPECT_TRUE(same_on_all_ranks(clean.outs[6]));
}

}  // namespace
}  // namespace gradcomm
