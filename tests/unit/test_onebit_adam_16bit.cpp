// OneBitAdam with float16 and bfloat16 parameters, over thread ranks: the float32 master
// copy follows, bit for bit, a float32 optimizer given the same gradients widened; the
// parameters are that master rounded once per step; every rank ends alike; a saved state
// resumes bitwise; a float32 state does not load into 16-bit parameters.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#include "core/float16.h"
#include "gradcomm/error.h"
#include "gradcomm/onebit.h"
#include "gradcomm/thread_communicator.h"

namespace gradcomm {
namespace {

constexpr std::size_t kParamSizes[] = {37, 300};
constexpr std::int64_t kFreeze = 3;
constexpr int kSteps = 7;

float widen(std::uint16_t x, DType dtype) {
  return dtype == DType::kFloat16 ? half_to_float(x) : bfloat16_to_float(x);
}
std::uint16_t narrow(float x, DType dtype) {
  return dtype == DType::kFloat16 ? float_to_half(x) : float_to_bfloat16(x);
}

// A deterministic gradient of (rank, step, param, index), exactly representable in 16 bits.
std::uint16_t gradient(int rank, int step, std::size_t param, std::size_t k, DType dtype) {
  std::uint64_t h =
      (static_cast<std::uint64_t>(rank) * 1000003u + static_cast<std::uint64_t>(step)) * 7919u +
      param * 104729u + k * 2654435761u;
  h ^= h >> 29;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 32;
  const float value = (static_cast<float>(h % 2001) - 1000.0f) / 1000.0f;
  return narrow(value, dtype);
}

struct Rank16 {
  std::vector<std::vector<std::uint16_t>> params16;
  std::vector<std::vector<float>> params32;
  std::vector<std::byte> saved;  // run_rank_steps: the state after kSaveAt steps
};

constexpr int kSaveAt = 5;

OneBitAdamOptions options() {
  OneBitAdamOptions o;
  o.lr = 0.01f;
  o.freeze_step = kFreeze;
  o.weight_decay = 0.01f;
  o.eps = 1e-5f;
  return o;
}

// One rank: a 16-bit optimizer and a float32 one on the widened initial values, both fed
// the same gradients (widened for the float32 one), kSteps steps through the parts a DDP
// hook drives: warm-up updates from an averaged gradient (the same on every rank), then
// this rank's local gradients into the 1-bit exchange of the momenta and the frozen update.
// (step() would average 16-bit gradients in their dtype, as a hook on 16-bit buckets does,
// so its warm-up is not the float32 run's.)
void run_rank(ThreadCommunicator& comm, DType dtype, bool precondition, Rank16& out) {
  std::vector<std::vector<std::uint16_t>>& p16 = out.params16;
  std::vector<std::vector<float>>& p32 = out.params32;
  std::vector<OneBitParam> v16, v32;
  for (std::size_t i = 0; i < std::size(kParamSizes); ++i) {
    p16.emplace_back(kParamSizes[i]);
    p32.emplace_back(kParamSizes[i]);
    for (std::size_t k = 0; k < kParamSizes[i]; ++k) {
      p16[i][k] = gradient(99, 0, i, k, dtype);  // the same initial values on every rank
      p32[i][k] = widen(p16[i][k], dtype);
    }
    v16.push_back({"p" + std::to_string(i), TensorView(p16[i].data(), kParamSizes[i], dtype), true, {}});
    v32.push_back({"p" + std::to_string(i), TensorView::of(std::span<float>(p32[i])), true, {}});
  }
  OneBitAdamOptions o = options();
  o.precondition = precondition;
  OneBitAdam opt16(comm, v16, o);
  OneBitAdam opt32(comm, v32, o);
  std::vector<std::vector<std::uint16_t>> g16(std::size(kParamSizes)), m16(std::size(kParamSizes));
  std::vector<std::vector<float>> g32(std::size(kParamSizes)), m32(std::size(kParamSizes));
  for (int step = 0; step < kSteps; ++step) {
    const bool warm = step < kFreeze;
    std::vector<TensorView> in16, in32, out16, out32;
    for (std::size_t i = 0; i < std::size(kParamSizes); ++i) {
      g16[i].resize(kParamSizes[i]);
      g32[i].resize(kParamSizes[i]);
      m16[i].resize(kParamSizes[i]);
      m32[i].resize(kParamSizes[i]);
      for (std::size_t k = 0; k < kParamSizes[i]; ++k) {
        g16[i][k] = gradient(warm ? 77 : comm.rank(), step, i, k, dtype);
        g32[i][k] = widen(g16[i][k], dtype);
      }
      in16.emplace_back(g16[i].data(), kParamSizes[i], dtype);
      in32.push_back(TensorView::of(std::span<float>(g32[i])));
      out16.emplace_back(m16[i].data(), kParamSizes[i], dtype);
      out32.push_back(TensorView::of(std::span<float>(m32[i])));
    }
    if (warm) {
      opt16.warmup_update(in16);
      opt32.warmup_update(in32);
      continue;
    }
    opt16.exchange_momentum(in16, out16);
    opt32.exchange_momentum(in32, out32);
    for (std::size_t i = 0; i < std::size(kParamSizes); ++i) {
      for (std::size_t k = 0; k < kParamSizes[i]; ++k) {
        ASSERT_EQ(m16[i][k], narrow(m32[i][k], dtype)) << "the averaged momentum, step " << step;
      }
    }
    opt16.frozen_update({});
    opt32.frozen_update({});
  }
  EXPECT_TRUE(opt16.frozen());
}

// One step() on this rank's gradients of `step` (g: their buffers).
void step_on_own_gradients(OneBitAdam& opt, int rank, int step, DType dtype,
                           std::vector<std::vector<std::uint16_t>>& g) {
  std::vector<TensorView> in;
  for (std::size_t i = 0; i < std::size(kParamSizes); ++i) {
    g[i].resize(kParamSizes[i]);
    for (std::size_t k = 0; k < kParamSizes[i]; ++k) g[i][k] = gradient(rank, step, i, k, dtype);
    in.emplace_back(g[i].data(), kParamSizes[i], dtype);
  }
  opt.step(in);
}

// The same 16-bit run through step() (the optimizer's own exchanges), saving its state
// after kSaveAt steps.
void run_rank_steps(ThreadCommunicator& comm, DType dtype, Rank16& out) {
  std::vector<OneBitParam> views;
  for (std::size_t i = 0; i < std::size(kParamSizes); ++i) {
    out.params16.emplace_back(kParamSizes[i]);
    for (std::size_t k = 0; k < kParamSizes[i]; ++k) out.params16[i][k] = gradient(99, 0, i, k, dtype);
    views.push_back(
        {"p" + std::to_string(i), TensorView(out.params16[i].data(), kParamSizes[i], dtype), true, {}});
  }
  OneBitAdam opt(comm, views, options());
  std::vector<std::vector<std::uint16_t>> g(std::size(kParamSizes));
  for (int step = 0; step < kSteps; ++step) {
    step_on_own_gradients(opt, comm.rank(), step, dtype, g);
    if (step + 1 == kSaveAt) out.saved = opt.save_state();
  }
}

class OneBitAdam16 : public ::testing::TestWithParam<std::tuple<DType, bool>> {};

TEST_P(OneBitAdam16, ParametersAreTheFloat32RunRoundedOnEveryRank) {
  const auto [dtype, precondition] = GetParam();
  for (int p : {1, 2, 3}) {
    std::vector<Rank16> ranks(static_cast<std::size_t>(p));
    ThreadCommunicator::run(p, [&](ThreadCommunicator& comm) {
      run_rank(comm, dtype, precondition, ranks[comm.rank()]);
    });
    for (int r = 0; r < p; ++r) {
      for (std::size_t i = 0; i < std::size(kParamSizes); ++i) {
        for (std::size_t k = 0; k < kParamSizes[i]; ++k) {
          // The 16-bit optimizer's master copy is the float32 run: its parameter is that
          // value rounded once (not a 16-bit value updated by 16-bit steps).
          ASSERT_EQ(ranks[r].params16[i][k], narrow(ranks[r].params32[i][k], dtype))
              << p << " ranks, rank " << r << ", param " << i << ", element " << k;
          ASSERT_EQ(ranks[r].params16[i][k], ranks[0].params16[i][k]) << "rank " << r << " drifted";
        }
      }
    }
    // It trained: the parameters moved from where they started.
    std::size_t moved = 0;
    for (std::size_t k = 0; k < kParamSizes[1]; ++k)
      moved += ranks[0].params16[1][k] != gradient(99, 0, 1, k, dtype);
    EXPECT_GT(moved, kParamSizes[1] / 2);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, OneBitAdam16,
                         ::testing::Combine(::testing::Values(DType::kFloat16, DType::kBFloat16),
                                            ::testing::Bool()));

// Resume from the state saved after kSaveAt steps (parameters as the saved run had them,
// restored from the master copy) and run the rest: bitwise the uninterrupted run.
TEST(OneBitAdam16Resume, SavedStateResumesBitwiseAndFloat32StatesAreRefused) {
  const DType dtype = DType::kBFloat16;
  const int p = 2;
  std::vector<Rank16> full(p);
  ThreadCommunicator::run(
      p, [&](ThreadCommunicator& comm) { run_rank_steps(comm, dtype, full[comm.rank()]); });
  std::vector<std::vector<std::vector<std::uint16_t>>> resumed(p);
  std::mutex mutex;
  int refused = 0;
  ThreadCommunicator::run(p, [&](ThreadCommunicator& comm) {
    std::vector<std::vector<std::uint16_t>>& params = resumed[comm.rank()];
    std::vector<OneBitParam> views;
    for (std::size_t i = 0; i < std::size(kParamSizes); ++i) {
      params.emplace_back(kParamSizes[i],
                          std::uint16_t{0});  // whatever they hold: the state restores them
      views.push_back(
          {"p" + std::to_string(i), TensorView(params[i].data(), kParamSizes[i], dtype), true, {}});
    }
    OneBitAdam opt(comm, views, options());
    opt.load_state(full[comm.rank()].saved);
    EXPECT_EQ(opt.steps_done(), kSaveAt);
    std::vector<std::vector<std::uint16_t>> g(std::size(kParamSizes));
    for (int step = kSaveAt; step < kSteps; ++step)
      step_on_own_gradients(opt, comm.rank(), step, dtype, g);
    // A state saved from float32 parameters of the same shapes does not fit.
    std::vector<std::vector<float>> p32;
    std::vector<OneBitParam> v32;
    for (std::size_t i = 0; i < std::size(kParamSizes); ++i) {
      p32.emplace_back(kParamSizes[i], 0.0f);
      v32.push_back({"p" + std::to_string(i), TensorView::of(std::span<float>(p32[i])), true, {}});
    }
    OneBitAdam opt32(comm, v32, options());
    try {
      opt.load_state(opt32.save_state());
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kCorruptPayload);
      EXPECT_NE(std::string(e.what()).find("saved from a float32 parameter"), std::string::npos)
          << e.what();
      std::lock_guard<std::mutex> lock(mutex);
      ++refused;
    }
  });
  EXPECT_EQ(refused, p);
  for (int r = 0; r < p; ++r) EXPECT_EQ(resumed[r], full[r].params16) << "rank " << r;
}

// A state written before 16-bit parameters existed (version 1: no master flag after each
// parameter's m and v) still loads into float32 parameters: made here from a version 2
// blob by taking the flags out, it restores the same momenta and steps on alike.
TEST(OneBitAdamState, Version1BlobsFromFloat32ParametersStillLoad) {
  ThreadCommunicator::run(2, [&](ThreadCommunicator& comm) {
    std::vector<std::vector<float>> a, b;
    std::vector<OneBitParam> va, vb;
    for (std::size_t i = 0; i < std::size(kParamSizes); ++i) {
      a.emplace_back(kParamSizes[i], 0.5f);
      b.emplace_back(kParamSizes[i], 0.5f);
      va.push_back({"p" + std::to_string(i), TensorView::of(std::span<float>(a[i])), true, {}});
      vb.push_back({"p" + std::to_string(i), TensorView::of(std::span<float>(b[i])), true, {}});
    }
    OneBitAdam saved(comm, va, options());
    std::vector<std::vector<float>> g(std::size(kParamSizes));
    auto step = [&](OneBitAdam& opt, int t) {
      std::vector<TensorView> in;
      for (std::size_t i = 0; i < std::size(kParamSizes); ++i) {
        g[i].resize(kParamSizes[i]);
        for (std::size_t k = 0; k < kParamSizes[i]; ++k)
          g[i][k] = widen(gradient(comm.rank(), t, i, k, DType::kBFloat16), DType::kBFloat16);
        in.push_back(TensorView::of(std::span<float>(g[i])));
      }
      opt.step(in);
    };
    for (int t = 0; t < kSaveAt; ++t) step(saved, t);
    std::vector<std::byte> blob = saved.save_state();
    // magic, version, world size, rank, step, count; then per parameter: length, kind, m, v, flag.
    std::uint32_t version = 1;
    std::memcpy(blob.data() + 4, &version, sizeof version);
    std::size_t at = 4 + 4 + 4 + 4 + 8 + 8;
    for (std::size_t i = 0; i < std::size(kParamSizes); ++i) {
      at += 8 + 1 + 2 * kParamSizes[i] * sizeof(float);
      ASSERT_EQ(blob[at], std::byte{0}) << "a float32 parameter has no master copy";
      blob.erase(blob.begin() + static_cast<std::ptrdiff_t>(at));
    }
    OneBitAdam loaded(comm, vb, options());
    loaded.load_state(blob);
    EXPECT_EQ(loaded.steps_done(), kSaveAt);
    for (std::size_t i = 0; i < std::size(kParamSizes); ++i) {
      ASSERT_TRUE(std::equal(loaded.momentum(i).begin(), loaded.momentum(i).end(),
                             saved.momentum(i).begin()));
    }
    b = a;  // the parameters as the saved run has them (state blobs do not hold float32 ones)
    for (int t = kSaveAt; t < kSteps; ++t) {
      step(saved, t);
      step(loaded, t);
    }
    EXPECT_EQ(a, b);
  });
}

TEST(OneBitAdam16Gradients, AGradientOfAnotherDtypeIsRefusedNamingBoth) {
  ThreadCommunicator::run(1, [&](ThreadCommunicator& comm) {
    std::vector<std::uint16_t> value(8, 0);
    OneBitAdam opt(comm, {{"w", TensorView(value.data(), 8, DType::kBFloat16), true, {}}},
                   options());
    std::vector<float> g(8, 1.0f);
    const TensorView wrong = TensorView::of(std::span<float>(g));
    try {
      opt.step(std::span<const TensorView>(&wrong, 1));
      FAIL() << "a float32 gradient for a bfloat16 parameter was taken";
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("expected bfloat16[8]"), std::string::npos) << what;
      EXPECT_NE(what.find("'w'"), std::string::npos) << what;
    }
  });
}

}  // namespace
}  // namespace gradcomm
