// The Exchanger over ThreadCommunicator ranks, without mpirun: dense (float32 and float16
// on the wire) and DGC give bitwise the same update on every rank, equal to the result
// computed here without any transport (sums in rank order, DGC's reference selection).
// tests/mpi/test_thread_vs_mpi.cpp compares the same runs against MpiCommunicator.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/float16.h"
#include "gradcomm/dense.h"
#include "gradcomm/dgc.h"
#include "gradcomm/exchanger.h"
#include "gradcomm/thread_communicator.h"
#include "unit/dgc_reference.h"

namespace gradcomm {
namespace {

std::vector<LayerSpec> dense_layers() {
  // Sizes 0, 1, odd, and one larger than the small buckets.
  return {{"embed", 5000, 2}, {"empty", 0, 1},   {"fc1.w", 1001, 2}, {"fc1.b", 7, 1},
          {"one", 1, 1},      {"big", 30001, 2}, {"fc2.w", 640, 2},  {"fc2.b", 10, 1}};
}

float grad_value(int rank, int step, std::size_t layer, std::size_t i) {
  return std::sin(static_cast<float>(i + 1) * 0.37f + static_cast<float>(layer) +
                  0.1f * static_cast<float>(step)) *
         static_cast<float>(rank + 1) * 0.01f;
}

struct Model {
  std::vector<std::vector<float>> grads, outs;
  std::vector<TensorView> grad_views, out_views;
  Model(const std::vector<LayerSpec>& layers, int rank, int step) {
    for (std::size_t l = 0; l < layers.size(); ++l) {
      grads.emplace_back(layers[l].numel);
      outs.emplace_back(layers[l].numel, -7.0f);
      for (std::size_t i = 0; i < layers[l].numel; ++i) grads[l][i] = grad_value(rank, step, l, i);
    }
    for (std::size_t l = 0; l < layers.size(); ++l) {
      grad_views.push_back(TensorView::of(std::span<float>(grads[l])));
      out_views.push_back(TensorView::of(std::span<float>(outs[l])));
    }
  }
};

// outs[rank][layer] after `steps` steps of a dense Exchanger on p thread ranks.
using Outputs = std::vector<std::vector<std::vector<float>>>;

Outputs run_dense(int p, DType wire, std::size_t bucket_bytes, int step) {
  Outputs outs(static_cast<std::size_t>(p));
  ThreadCommunicator::run(p, [&](ThreadCommunicator& comm) {
    Exchanger ex(comm, std::make_shared<DenseCompressor>(DenseOptions{wire}), dense_layers(),
                 {.bucket_bytes = bucket_bytes});
    Model m(dense_layers(), comm.rank(), step);
    ex.exchange(m.grad_views, m.out_views);
    outs[static_cast<std::size_t>(comm.rank())] = m.outs;
  });
  return outs;
}

TEST(ThreadExchanger, DenseEqualsTheRankOrderAverageOnEveryRank) {
  const auto layers = dense_layers();
  for (int p = 1; p <= 8; ++p) {
    for (std::size_t bucket : {std::size_t{64}, std::size_t{1} << 22}) {
      const Outputs outs = run_dense(p, DType::kFloat32, bucket, 0);
      const float inv = 1.0f / static_cast<float>(p);
      for (std::size_t l = 0; l < layers.size(); ++l) {
        std::vector<float> expected(layers[l].numel);
        for (std::size_t i = 0; i < expected.size(); ++i) {
          float sum = grad_value(0, 0, l, i);
          for (int r = 1; r < p; ++r) sum += grad_value(r, 0, l, i);
          expected[i] = sum * inv;
        }
        for (int r = 0; r < p; ++r) {
          ASSERT_EQ(outs[r][l], expected)
              << "p=" << p << " bucket " << bucket << " layer " << layers[l].name << " rank " << r;
        }
      }
    }
  }
}

TEST(ThreadExchanger, DenseFloat16WireEqualsTheRankOrderHalfSum) {
  const auto layers = dense_layers();
  for (int p : {2, 3, 7}) {
    const Outputs outs = run_dense(p, DType::kFloat16, std::size_t{1} << 16, 3);
    const float inv = 1.0f / static_cast<float>(p);
    for (std::size_t l = 0; l < layers.size(); ++l) {
      for (std::size_t i = 0; i < layers[l].numel; ++i) {
        std::uint16_t sum = float_to_half(grad_value(0, 3, l, i));
        for (int r = 1; r < p; ++r)
          sum = float_to_half(half_to_float(sum) +
                              half_to_float(float_to_half(grad_value(r, 3, l, i))));
        const float expected = half_to_float(sum) * inv;
        for (int r = 0; r < p; ++r)
          ASSERT_EQ(outs[r][l][i], expected) << "p=" << p << " layer " << l << " i " << i;
      }
    }
  }
}

std::vector<LayerSpec> dgc_layers() {
  // A conv weight of prime size, a bias (1-D: always dense), a fully connected weight.
  return {{"conv", 4099, 4, false}, {"bias", 37, 1, false}, {"fc", 2000, 2, false}};
}

DgcOptions exact_dgc(double density) {
  DgcOptions o;
  o.density = density;
  o.warmup_densities = {};
  o.selection = DgcSelection::kExact;
  return o;
}

// DGC with exact selection: every rank's momentum and residual, and the update, equal the
// straightforward reference (a full sort per rank), bitwise, step after step.
TEST(ThreadExchanger, DgcExactSelectionMatchesTheReferenceOnEveryRank) {
  const auto layers = dgc_layers();
  for (int p : {1, 2, 3, 5, 8}) {
    constexpr int kSteps = 4;
    // outs[step][rank][layer], residual[step][rank][layer]
    std::vector<Outputs> outs(kSteps, Outputs(static_cast<std::size_t>(p))), residuals = outs,
                                                                             momenta = outs;
    ThreadCommunicator::run(p, [&](ThreadCommunicator& comm) {
      const auto me = static_cast<std::size_t>(comm.rank());
      auto dgc = std::make_shared<DgcCompressor>(exact_dgc(0.01));
      Exchanger ex(comm, dgc, layers);
      for (int step = 0; step < kSteps; ++step) {
        Model m(layers, comm.rank(), step);
        ex.exchange(m.grad_views, m.out_views);
        outs[step][me] = m.outs;
        for (std::size_t l = 0; l < layers.size(); ++l) {
          if (!dgc->is_sparse(l)) continue;
          const auto v = dgc->residual(l);
          const auto u = dgc->momentum(l);
          residuals[step][me].emplace_back(v.begin(), v.end());
          momenta[step][me].emplace_back(u.begin(), u.end());
        }
      }
    });
    std::vector<std::vector<testing::DgcReferenceRank>> ref(static_cast<std::size_t>(p));
    for (auto& r : ref)
      for (const LayerSpec& l : layers) r.emplace_back(l.numel);
    for (int step = 0; step < kSteps; ++step) {
      std::size_t sparse_index = 0;
      for (std::size_t l : {std::size_t{0}, std::size_t{2}}) {
        const std::size_t n = layers[l].numel,
                          k = static_cast<std::size_t>(std::ceil(0.01 * static_cast<double>(n)));
        std::vector<float> expect(n, 0.0f);
        for (int r = 0; r < p; ++r) {
          ref[static_cast<std::size_t>(r)][l].step(
              [&](std::size_t i) { return grad_value(r, step, l, i); }, k, p, expect);
        }
        for (int r = 0; r < p; ++r) {
          ASSERT_EQ(outs[step][r][l], expect)
              << "p=" << p << " step " << step << " layer " << l << " rank " << r;
          ASSERT_EQ(residuals[step][r][sparse_index], ref[r][l].v)
              << "residual, p=" << p << " step " << step;
          ASSERT_EQ(momenta[step][r][sparse_index], ref[r][l].u)
              << "momentum, p=" << p << " step " << step;
        }
        sparse_index += 1;
      }
      for (int r = 1; r < p; ++r)
        ASSERT_EQ(outs[step][r], outs[step][0]) << "p=" << p << " step " << step;
    }
  }
}

// Sampled selection, the paper's warm-up, float16 values and dense layers: whatever the
// threads' timing, every rank ends each step with the same bits, and a second run of the
// same job gives the same bits again.
TEST(ThreadExchanger, DgcSampledIsBitwiseIdenticalAndRepeatable) {
  const auto layers = dgc_layers();
  for (int p : {3, 4}) {
    auto job = [&] {
      std::vector<Outputs> outs(10, Outputs(static_cast<std::size_t>(p)));
      ThreadCommunicator::run(p, [&](ThreadCommunicator& comm) {
        DgcOptions o;
        o.density = 0.002;
        o.steps_per_epoch = 2;
        o.value_dtype = DType::kFloat16;
        o.dense_dtype = DType::kFloat16;
        Exchanger ex(comm, std::make_shared<DgcCompressor>(o), layers);
        for (int step = 0; step < 10; ++step) {
          Model m(layers, comm.rank(), step);
          ex.exchange(m.grad_views, m.out_views);
          outs[step][static_cast<std::size_t>(comm.rank())] = m.outs;
        }
      });
      return outs;
    };
    const auto first = job(), second = job();
    for (int step = 0; step < 10; ++step) {
      for (int r = 0; r < p; ++r) {
        ASSERT_EQ(first[step][r], first[step][0]) << "p=" << p << " step " << step << " rank " << r;
        ASSERT_EQ(second[step][r], first[step][r])
            << "p=" << p << " step " << step << " rank " << r;
      }
    }
  }
}

// Settings that differ between ranks fail the Exchanger's setup on every rank, as over MPI.
TEST(ThreadExchanger, DisagreeingSettingsFailOnEveryRank) {
  std::vector<int> threw(3, 0);
  ThreadCommunicator::run(3, [&](ThreadCommunicator& comm) {
    const DType wire = comm.rank() == 1 ? DType::kFloat16 : DType::kFloat32;
    try {
      Exchanger ex(comm, std::make_shared<DenseCompressor>(DenseOptions{wire}), dense_layers());
    } catch (const Error& e) {
      threw[static_cast<std::size_t>(comm.rank())] = 1;
      EXPECT_NE(e.message().find("'wire'"), std::string::npos) << e.what();
    }
  });
  EXPECT_EQ(threw, std::vector<int>(3, 1));
}

// agree_every_step: a schedule moved on some ranks only (set_epoch moves DGC's warm-up
// density, restore_step the step) fails that step on every rank, before any collective of
// mismatched sizes, naming every rank's step and the ranks whose layout differs.
TEST(ThreadExchanger, ScheduleMovedOnSomeRanksFailsTheStepOnEveryRank) {
  const auto layers = dgc_layers();
  struct Case {
    const char* name;
    int p;
    void (*move)(Exchanger&, DgcCompressor&);
    const char* steps;
  };
  const Case cases[] = {
      {"set_epoch", 5, [](Exchanger&, DgcCompressor& dgc) { dgc.set_epoch(1); }, "[2, 2, 2, 2, 2]"},
      {"restore_step", 3, [](Exchanger& ex, DgcCompressor&) { ex.restore_step(7); }, "[2, 2, 7]"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> messages(static_cast<std::size_t>(c.p));
    std::vector<int> steps_done(static_cast<std::size_t>(c.p), 0);
    ThreadCommunicator::run(c.p, [&](ThreadCommunicator& comm) {
      const auto me = static_cast<std::size_t>(comm.rank());
      DgcOptions o = exact_dgc(0.01);
      o.warmup_densities = {0.25, 0.0625};
      auto dgc = std::make_shared<DgcCompressor>(o);
      Exchanger ex(comm, dgc, layers, {.agree_every_step = true});
      try {
        for (int step = 0; step < 4; ++step) {
          if (step == 2 && comm.rank() == c.p - 1) c.move(ex, *dgc);
          Model m(layers, comm.rank(), step);
          ex.exchange(m.grad_views, m.out_views);
          steps_done[me] += 1;
        }
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::kSizeMismatch) << e.what();
        messages[me] = e.message();
      }
    });
    const std::string differing = "ranks [" + std::to_string(c.p - 1) + "] laid their step out unlike rank 0";
    for (int r = 0; r < c.p; ++r) {
      const std::string& m = messages[static_cast<std::size_t>(r)];
      EXPECT_EQ(steps_done[static_cast<std::size_t>(r)], 2) << c.name << " rank " << r;
      EXPECT_NE(m.find("out differently"), std::string::npos) << c.name << " rank " << r << ": " << m;
      EXPECT_NE(m.find(std::string("the ranks are at steps ") + c.steps), std::string::npos)
          << c.name << " rank " << r << ": " << m;
      EXPECT_NE(m.find(differing), std::string::npos) << c.name << " rank " << r << ": " << m;
    }
  }
}

}  // namespace
}  // namespace gradcomm
