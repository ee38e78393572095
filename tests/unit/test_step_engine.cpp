// StepEngine without a communicator: p engines in one process, one per simulated rank, and
// the collectives they ask for carried out here by hand (sum in rank order, or
// concatenation in rank order). This checks the layout, the framing, the decoding, the
// non-finite policy and the 16-bit edges of the one engine every driver (Exchanger, DDP
// hooks) uses, with no transport in the way.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "core/float16.h"
#include "gradcomm/dense.h"
#include "gradcomm/dgc.h"
#include "gradcomm/step_engine.h"

namespace gradcomm {
namespace {

// Runs the collectives of p engines that have all submitted everything, in the agreed
// order, by hand.
void run_collectives(std::vector<std::unique_ptr<StepEngine>>& ranks) {
  const std::size_t p = ranks.size();
  for (;;) {
    std::vector<CollectiveRequest> requests;
    for (auto& engine : ranks) {
      std::optional<CollectiveRequest> r = engine->next_ready();
      if (!r) break;
      requests.push_back(*r);
    }
    if (requests.empty()) return;
    ASSERT_EQ(requests.size(), p) << "ranks disagree on the next collective";
    const CollectiveRequest& first = requests[0];
    for (const CollectiveRequest& r : requests) {
      ASSERT_EQ(r.id, first.id);
      ASSERT_EQ(r.collective, first.collective);
      ASSERT_EQ(r.send.nbytes(), first.send.nbytes());
    }
    if (first.collective == Collective::kAllgather) {
      const std::size_t block = first.send.nbytes();
      std::vector<std::byte> all(p * block);
      for (std::size_t q = 0; q < p; ++q) std::memcpy(all.data() + q * block, requests[q].send.data(), block);
      for (const CollectiveRequest& r : requests) std::memcpy(r.recv.data(), all.data(), all.size());
    } else {
      const std::size_t n = first.send.numel();
      std::vector<float> sum(n, 0.0f);
      for (const CollectiveRequest& r : requests) {
        for (std::size_t i = 0; i < n; ++i) {
          sum[i] += r.send.dtype() == DType::kFloat16
                        ? half_to_float(static_cast<const std::uint16_t*>(r.send.data())[i])
                        : static_cast<const float*>(r.send.data())[i];
        }
      }
      for (const CollectiveRequest& r : requests) {
        for (std::size_t i = 0; i < n; ++i) {
          if (r.recv.dtype() == DType::kFloat16) {
            static_cast<std::uint16_t*>(r.recv.data())[i] = float_to_half(sum[i]);
          } else {
            static_cast<float*>(r.recv.data())[i] = sum[i];
          }
        }
      }
    }
    for (std::size_t q = 0; q < p; ++q) ranks[q]->complete(first.id);
  }
}

std::vector<LayerSpec> model(DType dtype = DType::kFloat32) {
  std::vector<LayerSpec> layers = {{"fc1.w", 600, 2}, {"fc1.b", 30, 1}, {"fc2.w", 300, 2}, {"fc2.b", 10, 1}};
  for (LayerSpec& l : layers) l.dtype = dtype;
  return layers;
}

float gradient(std::size_t rank, std::size_t layer, std::size_t i) {
  return static_cast<float>((rank + 1) * (layer + 3)) * 0.01f + static_cast<float>(i % 17) * 0.125f;
}

template <typename MakeCompressor>
std::vector<std::unique_ptr<StepEngine>> engines(std::size_t p, MakeCompressor make,
                                                 std::vector<LayerSpec> layers, StepEngineOptions o = {}) {
  std::vector<std::unique_ptr<StepEngine>> ranks;
  for (std::size_t q = 0; q < p; ++q) {
    ranks.push_back(std::make_unique<StepEngine>(make(), layers, static_cast<int>(p), static_cast<int>(q), o));
  }
  return ranks;
}

TEST(StepEngine, DenseUpdateIsTheAverageOnEveryRank) {
  const std::size_t p = 3;
  auto ranks = engines(p, [] { return std::make_shared<DenseCompressor>(); }, model(),
                       StepEngineOptions{.bucket_bytes = 1024});
  std::vector<std::vector<std::vector<float>>> grads(p);
  for (std::size_t q = 0; q < p; ++q) {
    ranks[q]->begin_step(0);
    for (std::size_t l = 0; l < 4; ++l) {
      grads[q].emplace_back(model()[l].numel);
      for (std::size_t i = 0; i < grads[q][l].size(); ++i) grads[q][l][i] = gradient(q, l, i);
    }
    for (std::size_t l = 4; l-- > 0;) {  // backward order
      TensorView g = TensorView::of(std::span<float>(grads[q][l]));
      ranks[q]->submit(l, g, g);
    }
  }
  run_collectives(ranks);
  for (std::size_t q = 0; q < p; ++q) {
    const StepStats& stats = ranks[q]->finish_step();
    // 1024-byte buckets cut the 3760 payload bytes into several allreduces; the layout
    // is a pure function of the wires, so every rank runs the same ones.
    EXPECT_GT(stats.collectives, 1u);
    EXPECT_EQ(stats.collectives, ranks[0]->collectives_this_step());
    EXPECT_FALSE(stats.skipped);
    for (std::size_t l = 0; l < 4; ++l) {
      for (std::size_t i = 0; i < grads[q][l].size(); ++i) {
        const float sum = gradient(0, l, i) + gradient(1, l, i) + gradient(2, l, i);
        ASSERT_EQ(grads[q][l][i], sum * (1.0f / 3.0f)) << "rank " << q << " layer " << l << " i " << i;
      }
    }
  }
}

// float16 and bfloat16 gradients: the compressor sees float32 and the update is rounded
// once, to nearest even, into the gradient's dtype.
class SixteenBit : public ::testing::TestWithParam<DType> {};

TEST_P(SixteenBit, GradientsAreWidenedAndUpdatesNarrowedOnce) {
  const DType dtype = GetParam();
  auto narrow = [&](float x) { return dtype == DType::kBFloat16 ? float_to_bfloat16(x) : float_to_half(x); };
  auto widen = [&](std::uint16_t x) { return dtype == DType::kBFloat16 ? bfloat16_to_float(x) : half_to_float(x); };
  const std::size_t p = 2;
  auto ranks = engines(p, [] { return std::make_shared<DenseCompressor>(); }, model(dtype));
  std::vector<std::vector<std::vector<std::uint16_t>>> grads(p);
  for (std::size_t q = 0; q < p; ++q) {
    ranks[q]->begin_step(0);
    for (std::size_t l = 0; l < 4; ++l) {
      grads[q].emplace_back(model()[l].numel);
      for (std::size_t i = 0; i < grads[q][l].size(); ++i) grads[q][l][i] = narrow(gradient(q, l, i));
    }
    for (std::size_t l = 4; l-- > 0;) {
      TensorView g(grads[q][l].data(), grads[q][l].size(), dtype);
      ranks[q]->submit(l, g, g);
    }
  }
  run_collectives(ranks);
  for (std::size_t q = 0; q < p; ++q) {
    ranks[q]->finish_step();
    for (std::size_t l = 0; l < 4; ++l) {
      for (std::size_t i = 0; i < grads[q][l].size(); ++i) {
        const float sum = widen(narrow(gradient(0, l, i))) + widen(narrow(gradient(1, l, i)));
        ASSERT_EQ(grads[q][l][i], narrow(sum * 0.5f)) << "rank " << q << " layer " << l << " i " << i;
      }
    }
  }
  // A float32 gradient for a 16-bit layer is a usage error naming both.
  ranks[0]->begin_step(1);
  std::vector<float> wrong(10);
  TensorView w = TensorView::of(std::span<float>(wrong));
  try {
    ranks[0]->submit(3, w, w);
    FAIL() << "accepted a float32 gradient for a 16-bit layer";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kSizeMismatch);
    EXPECT_NE(e.message().find(std::string("10 ") + dtype_name(dtype) + " elements"), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, SixteenBit, ::testing::Values(DType::kFloat16, DType::kBFloat16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(StepEngine, RefusesGradientDtypesItCannotExchange) {
  std::vector<LayerSpec> layers = {{"w", 4, 2}};
  layers[0].dtype = DType::kInt32;
  try {
    StepEngine(std::make_shared<DenseCompressor>(), layers, 1, 0);
    FAIL() << "int32 gradients accepted";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("int32 gradients"), std::string::npos) << e.what();
  }
}

// The layout: allreduce groups of one wire dtype up to bucket_bytes, allgather groups for
// sparse layers, issued in backward order as soon as every layer of the group is encoded.
TEST(StepEngine, CollectivesStartOnlyWhenTheirLayersAreEncodedAndInOrder) {
  DgcOptions o;
  o.density = 0.01;
  o.warmup_densities.clear();
  o.dense_fallback = false;
  StepEngine engine(std::make_shared<DgcCompressor>(o), model(), 1, 0);
  engine.begin_step(0);
  std::vector<std::vector<float>> grads;
  for (std::size_t l = 0; l < 4; ++l) grads.emplace_back(model()[l].numel, 1.0f);
  auto submit = [&](std::size_t l) {
    TensorView g = TensorView::of(std::span<float>(grads[l]));
    engine.submit(l, g, g);
  };
  // Backward order: fc2.b (dense), fc2.w (sparse), fc1.b (dense), fc1.w (sparse). Each
  // layer joins the open group of its kind: one allreduce {fc2.b, fc1.b}, complete at
  // fc1.b, then one allgather {fc2.w, fc1.w}, complete at fc1.w.
  submit(3);
  EXPECT_FALSE(engine.next_ready().has_value());  // fc1.b is not encoded yet
  submit(2);
  EXPECT_FALSE(engine.next_ready().has_value());  // the allgather comes second
  submit(1);
  auto first = engine.next_ready();
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->id, 0u);
  EXPECT_EQ(first->collective, Collective::kAllreduce);
  EXPECT_EQ(first->send.numel(), 10u + 30u + 2u);  // both payloads, then a status element each
  EXPECT_FALSE(engine.next_ready().has_value());
  EXPECT_THROW(engine.check_all_submitted(), Error);  // fc1.w is missing
  submit(0);
  auto second = engine.next_ready();
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->id, 1u);
  EXPECT_EQ(second->collective, Collective::kAllgather);
  EXPECT_FALSE(engine.next_ready().has_value());
  EXPECT_EQ(engine.collectives_this_step(), 2u);
}

TEST(StepEngine, AFullGroupIsClosedAndTheLayerOpensTheNext) {
  // Dense float32 at bucket_bytes 1300, backward order fc2.b (40 bytes), fc2.w (1200),
  // fc1.b (120), fc1.w (2400): {fc2.b, fc2.w} (1240 bytes), then fc1.b alone (1360 would
  // not fit), then fc1.w alone (larger than a bucket), in that order however the layers
  // are submitted.
  StepEngine engine(std::make_shared<DenseCompressor>(), model(), 1, 0, StepEngineOptions{.bucket_bytes = 1300});
  engine.begin_step(0);
  std::vector<std::vector<float>> grads;
  for (std::size_t l = 0; l < 4; ++l) grads.emplace_back(model()[l].numel, 1.0f);
  for (std::size_t l = 0; l < 4; ++l) {  // forward order: nothing can start before fc2.b
    TensorView g = TensorView::of(std::span<float>(grads[l]));
    engine.submit(l, g, g);
  }
  const std::size_t expected_numel[] = {10 + 300 + 2, 30 + 1, 600 + 1};
  for (std::size_t id = 0; id < 3; ++id) {
    auto request = engine.next_ready();
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->id, id);
    EXPECT_EQ(request->send.numel(), expected_numel[id]);
  }
  EXPECT_FALSE(engine.next_ready().has_value());
}

TEST(StepEngine, AGroupClosedEarlyStartsBeforeOneStillOpen) {
  // Two DGC weights whose payloads never fit one bucket together, with a bias after each.
  // Backward order b2, w2, b1, w1: the allreduce {b2, b1} stays open across w2, whose
  // allgather is closed by w1 and so comes first: allgather {w2}, allreduce {b2, b1},
  // allgather {w1}. Cutting at every change of kind would make it four collectives.
  DgcOptions o;
  o.density = 0.01;
  o.warmup_densities.clear();
  o.dense_fallback = false;
  const std::vector<LayerSpec> layers = {{"w1", 6000, 2}, {"b1", 4, 1}, {"w2", 6000, 2}, {"b2", 4, 1}};
  auto probe = std::make_shared<DgcCompressor>(o);
  probe->setup(layers, 1, 0);
  const std::size_t weight_bytes = probe->wire(0).bytes();
  ASSERT_EQ(probe->wire(0).collective, Collective::kAllgather);
  ASSERT_EQ(probe->wire(1).collective, Collective::kAllreduce);
  ASSERT_GT(weight_bytes, 32u);  // the two biases (16 bytes each) fit beside each other
  StepEngine engine(std::make_shared<DgcCompressor>(o), layers, 1, 0,
                    StepEngineOptions{.bucket_bytes = weight_bytes});
  engine.begin_step(0);
  std::vector<std::vector<float>> grads;
  for (const LayerSpec& l : layers) grads.emplace_back(l.numel, 1.0f);
  auto submit = [&](std::size_t l) {
    TensorView g = TensorView::of(std::span<float>(grads[l]));
    engine.submit(l, g, g);
  };
  submit(3);
  EXPECT_FALSE(engine.next_ready().has_value());
  submit(2);
  auto first = engine.next_ready();
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->collective, Collective::kAllgather);
  EXPECT_FALSE(engine.next_ready().has_value());  // b1 is not encoded yet
  submit(1);
  auto second = engine.next_ready();
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->collective, Collective::kAllreduce);
  EXPECT_EQ(second->send.numel(), 4u + 4u + 2u);  // b2 and b1, then a status element each
  EXPECT_FALSE(engine.next_ready().has_value());
  submit(0);
  auto third = engine.next_ready();
  ASSERT_TRUE(third.has_value());
  EXPECT_EQ(third->collective, Collective::kAllgather);
  EXPECT_EQ(engine.collectives_this_step(), 3u);
}

TEST(StepEngine, NonFinitePolicyIsAppliedAlikeOnEveryRank) {
  for (NonFinitePolicy policy : {NonFinitePolicy::kError, NonFinitePolicy::kSkipStep, NonFinitePolicy::kZero}) {
    const std::size_t p = 3;
    auto ranks = engines(p, [] { return std::make_shared<DenseCompressor>(); }, model(),
                         StepEngineOptions{.nonfinite = policy});
    std::vector<std::vector<std::vector<float>>> grads(p);
    for (std::size_t q = 0; q < p; ++q) {
      ranks[q]->begin_step(7);
      for (std::size_t l = 0; l < 4; ++l) grads[q].emplace_back(model()[l].numel, 1.0f);
      if (q == 2) grads[q][2][5] = std::numeric_limits<float>::quiet_NaN();
      for (std::size_t l = 4; l-- > 0;) {
        TensorView g = TensorView::of(std::span<float>(grads[q][l]));
        ranks[q]->submit(l, g, g);
      }
    }
    run_collectives(ranks);
    for (std::size_t q = 0; q < p; ++q) {
      if (policy == NonFinitePolicy::kError) {
        try {
          ranks[q]->finish_step();
          FAIL() << "no error on rank " << q;
        } catch (const Error& e) {
          EXPECT_EQ(e.code(), ErrorCode::kNonFinite);
          EXPECT_NE(e.message().find("step 7 on rank " + std::to_string(q) + ": 1 of 3 ranks met NaN or Inf"),
                    std::string::npos) << e.what();
          EXPECT_NE(e.message().find("'fc2.w'"), std::string::npos) << e.what();
        }
        continue;
      }
      const StepStats& stats = ranks[q]->finish_step();
      EXPECT_EQ(stats.nonfinite, 1u);
      EXPECT_EQ(stats.skipped, policy == NonFinitePolicy::kSkipStep);
      const float expected = policy == NonFinitePolicy::kSkipStep ? 0.0f : 1.0f;
      EXPECT_EQ(grads[q][0][0], expected);
      // Under kZero the bad element counts as 0: (1 + 1 + 0) / 3 there.
      EXPECT_EQ(grads[q][2][5], policy == NonFinitePolicy::kSkipStep ? 0.0f : 2.0f / 3.0f);
    }
  }
}

}  // namespace
}  // namespace gradcomm
