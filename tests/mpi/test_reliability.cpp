// Bad input through the whole exchange on 2, 3 and 4 ranks (the rows of
// docs/reliability.md): settings that differ on one rank, a non-finite gradient on one
// rank under each NonFinitePolicy, and corrupt bytes arriving through the allgather. Each
// must end the same way on every rank, never in a hang.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "gradcomm/dgc.h"
#include "gradcomm/gradcomm.h"
#include "gradcomm/quantize.h"
#include "mpi/mpi_test_util.h"

namespace gradcomm {
namespace {

using testing::all_ranks;
using testing::same_on_all_ranks;

std::vector<LayerSpec> model() {
  return {{"fc1.weight", 1200, 2}, {"fc1.bias", 40, 1}, {"fc2.weight", 401, 2}, {"fc2.bias", 10, 1}};
}

struct Buffers {
  std::vector<std::vector<float>> grads, outs;
  std::vector<TensorView> grad_views, out_views;
  Buffers(const std::vector<LayerSpec>& layers, int rank, int step) {
    for (const LayerSpec& l : layers) {
      grads.emplace_back(l.numel);
      outs.emplace_back(l.numel, -9.0f);
    }
    for (std::size_t l = 0; l < layers.size(); ++l) {
      for (std::size_t i = 0; i < grads[l].size(); ++i) {
        grads[l][i] = std::sin(0.7f * static_cast<float>(i) + static_cast<float>(l + step)) * static_cast<float>(rank + 1);
      }
      grad_views.push_back(TensorView::of(std::span<float>(grads[l])));
      out_views.push_back(TensorView::of(std::span<float>(outs[l])));
    }
  }
};

// ---- agreement: a setting that differs on one rank fails at setup on every rank ---------

struct Mismatch {
  const char* name;
  const char* needle;  // expected in the message on every rank
  // Makes this rank's Exchanger; `odd` is true on the one rank that differs.
  std::function<void(Communicator&, bool odd)> build;
};

std::vector<Mismatch> mismatches() {
  return {
      {"nonfinite_policy", "the settings differ between ranks: 'nonfinite' is",
       [](Communicator& comm, bool odd) {
         ExchangerOptions o;
         o.nonfinite = odd ? NonFinitePolicy::kZero : NonFinitePolicy::kError;
         Exchanger(comm, std::make_unique<DenseCompressor>(), model(), o);
       }},
      {"bucket_bytes", "bucket_bytes",
       [](Communicator& comm, bool odd) {
         ExchangerOptions o;
         o.bucket_bytes = odd ? 1024 : 4096;
         Exchanger(comm, std::make_unique<DenseCompressor>(), model(), o);
       }},
      {"layer_name", "the names differ",
       [](Communicator& comm, bool odd) {
         auto layers = model();
         if (odd) layers[2].name = "fc2.w";
         Exchanger(comm, std::make_unique<DenseCompressor>(), layers);
       }},
      {"force_dense", "forced dense",
       [](Communicator& comm, bool odd) {
         auto layers = model();
         layers[0].force_dense = odd;
         Exchanger(comm, std::make_unique<DenseCompressor>(), layers);
       }},
      {"layer_order", "layer 0",
       [](Communicator& comm, bool odd) {
         auto layers = model();
         if (odd) std::swap(layers[0], layers[2]);
         Exchanger(comm, std::make_unique<DenseCompressor>(), layers);
       }},
      {"compressor", "'compressor' is",
       [](Communicator& comm, bool odd) {
         std::unique_ptr<Compressor> c;
         if (odd) c = std::make_unique<QuantizeCompressor>();
         else c = std::make_unique<DenseCompressor>();
         Exchanger(comm, std::move(c), model());
       }},
      {"quantize_bits", "bits=",
       [](Communicator& comm, bool odd) {
         QuantizeOptions o;
         o.bits = odd ? 2 : 4;
         Exchanger(comm, std::make_unique<QuantizeCompressor>(o), model());
       }},
      {"dgc_momentum", "momentum",
       [](Communicator& comm, bool odd) {
         DgcOptions o;
         o.momentum = odd ? 0.8f : 0.9f;
         Exchanger(comm, std::make_unique<DgcCompressor>(o), model());
       }},
  };
}

class Agreement : public ::testing::TestWithParam<Mismatch> {};

TEST_P(Agreement, OneRankDifferentFailsOnEveryRank) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const Mismatch& m = GetParam();
  // Each rank in turn is the odd one: rank 0 (the reference in the message) and the last.
  for (int odd : {0, comm.size() - 1}) {
    ErrorCode code{};
    std::string message;
    try {
      m.build(comm, comm.rank() == odd);
    } catch (const Error& e) {
      code = e.code();
      message = e.message();
    }
    EXPECT_TRUE(all_ranks(code == ErrorCode::kSizeMismatch)) << m.name << ", odd rank " << odd << ": " << message;
    EXPECT_NE(message.find(m.needle), std::string::npos) << m.name << ": " << message;
  }
}

INSTANTIATE_TEST_SUITE_P(Settings, Agreement, ::testing::ValuesIn(mismatches()),
                         [](const auto& info) { return std::string(info.param.name); });

// Local checks come before the agreement's collectives, so every rank throws alone and
// none is left waiting in one.
TEST(Exchanger, AbsurdOptionsFailOnEveryRankBeforeAnyCollective) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  auto code_of = [&](auto&& build) {
    try {
      build();
    } catch (const Error& e) {
      return e.code();
    }
    return ErrorCode{};
  };
  EXPECT_TRUE(all_ranks(code_of([&] {
                          Exchanger(comm, std::make_unique<DenseCompressor>(), model(), {.bucket_bytes = 0});
                        }) == ErrorCode::kInvalidArgument));
  EXPECT_TRUE(all_ranks(code_of([&] { Exchanger(comm, nullptr, model()); }) == ErrorCode::kInvalidArgument));
  // Nothing is left in flight: a well-formed Exchanger still agrees and exchanges.
  Exchanger ex(comm, std::make_unique<DenseCompressor>(), model());
  Buffers b(model(), comm.rank(), 0);
  ex.exchange(b.grad_views, b.out_views);
  for (const auto& out : b.outs) EXPECT_TRUE(same_on_all_ranks(out));
}

// ---- non-finite gradients on one rank ------------------------------------------------------

struct NanCase {
  const char* name;
  std::function<std::unique_ptr<Compressor>()> make;
};

std::vector<NanCase> nan_compressors() {
  return {
      {"dense", [] { return std::make_unique<DenseCompressor>(); }},
      {"dense_fp16", [] { return std::make_unique<DenseCompressor>(DenseOptions{DType::kFloat16}); }},
      {"dgc",
       [] {
         DgcOptions o;
         o.density = 0.05;
         o.warmup_densities = {};
         o.dense_fallback = false;
         return std::make_unique<DgcCompressor>(o);
       }},
      {"quantize", [] { return std::make_unique<QuantizeCompressor>(QuantizeOptions{.bits = 4, .bucket_size = 64}); }},
  };
}

using NanParam = std::tuple<NanCase, NonFinitePolicy, float>;

class NonFinite : public ::testing::TestWithParam<NanParam> {};

TEST_P(NonFinite, SameDecisionOnEveryRank) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const auto& [c, policy, bad_value] = GetParam();
  const auto layers = model();
  // A small bucket keeps every layer in its own group, so the error names the layer.
  const ExchangerOptions options{.bucket_bytes = 64, .nonfinite = policy};
  for (int bad_rank : {0, comm.size() - 1}) {
    SCOPED_TRACE("non-finite on rank " + std::to_string(bad_rank));
    Exchanger ex(comm, c.make(), layers, options);
    // Twin: the same run where the bad element is an honest 0 (what the compressors do
    // with it), for the kZero comparison.
    Exchanger twin(comm, c.make(), layers, options);
    Buffers warm(layers, comm.rank(), 0), warm_twin(layers, comm.rank(), 0);
    ex.exchange(warm.grad_views, warm.out_views);
    twin.exchange(warm_twin.grad_views, warm_twin.out_views);

    Buffers b(layers, comm.rank(), 1), clean(layers, comm.rank(), 1);
    if (comm.rank() == bad_rank) {
      b.grads[2][17] = bad_value;
      clean.grads[2][17] = 0.0f;
    }
    ErrorCode code{};
    std::string message;
    StepStats stats;
    try {
      stats = ex.exchange(b.grad_views, b.out_views);
    } catch (const Error& e) {
      code = e.code();
      message = e.message();
    }
    switch (policy) {
      case NonFinitePolicy::kError:
        ASSERT_TRUE(all_ranks(code == ErrorCode::kNonFinite)) << message;
        EXPECT_NE(message.find("fc2.weight"), std::string::npos) << message;
        break;
      case NonFinitePolicy::kSkipStep: {
        ASSERT_TRUE(all_ranks(code == ErrorCode{})) << message;
        EXPECT_TRUE(all_ranks(stats.skipped && stats.nonfinite > 0));
        bool zero = true;
        for (const auto& out : b.outs) zero = zero && std::all_of(out.begin(), out.end(), [](float x) { return x == 0.0f; });
        EXPECT_TRUE(all_ranks(zero)) << "a skipped step must give every rank a zero update";
        break;
      }
      case NonFinitePolicy::kZero: {
        ASSERT_TRUE(all_ranks(code == ErrorCode{})) << message;
        EXPECT_TRUE(all_ranks(!stats.skipped && stats.nonfinite > 0));
        twin.exchange(clean.grad_views, clean.out_views);
        bool equal = true;
        for (std::size_t l = 0; l < layers.size(); ++l) {
          equal = equal && std::memcmp(b.outs[l].data(), clean.outs[l].data(), b.outs[l].size() * 4) == 0;
          EXPECT_TRUE(same_on_all_ranks(b.outs[l])) << layers[l].name;
        }
        EXPECT_TRUE(all_ranks(equal)) << "kZero must equal a run with the element set to 0";
        break;
      }
    }
    // Whatever the policy, the next clean step goes through on every rank.
    Buffers next(layers, comm.rank(), 2);
    const StepStats& after = ex.exchange(next.grad_views, next.out_views);
    EXPECT_TRUE(all_ranks(after.nonfinite == 0 && !after.skipped));
    for (const auto& out : next.outs) EXPECT_TRUE(same_on_all_ranks(out));
  }
}

std::string nan_name(const ::testing::TestParamInfo<NanParam>& info) {
  const auto& [c, policy, value] = info.param;
  return std::string(c.name) + "_" + nonfinite_policy_name(policy) + (std::isnan(value) ? "_nan" : "_inf");
}

INSTANTIATE_TEST_SUITE_P(Policies, NonFinite,
                         ::testing::Combine(::testing::ValuesIn(nan_compressors()),
                                            ::testing::Values(NonFinitePolicy::kError, NonFinitePolicy::kSkipStep,
                                                              NonFinitePolicy::kZero),
                                            ::testing::Values(std::nanf(""), -std::numeric_limits<float>::infinity())),
                         nan_name);

// ---- a skipped step loses nothing from error feedback --------------------------------------

// Error feedback's ledger, per compressed layer: everything the ranks put in (their
// gradients, non-finite elements as 0) = p * (sum of the updates applied) + what is still
// in their residuals. A skipped step applies nothing, so what each rank sent in it must be
// back in its residual. Runs 5 steps; step 2 has a NaN on rank 0 and is skipped.
struct SkipCase {
  const char* name;
  std::function<std::unique_ptr<Compressor>()> make;
  // The residual of a compressed layer (empty for one that is not compressed).
  std::function<std::span<const float>(Compressor&, std::size_t layer)> residual;
};

std::vector<SkipCase> skip_cases() {
  auto quant_residual = [](Compressor& c, std::size_t l) { return dynamic_cast<QuantizeCompressor&>(c).residual(l); };
  // Momentum 0: v then holds exactly the gradients not yet sent, which the ledger needs.
  auto dgc = [](std::vector<double> warmup, DType values, std::int64_t steps_per_epoch) {
    return [=] {
      DgcOptions o;
      o.density = 0.05;
      o.momentum = 0.0f;
      o.warmup_densities = warmup;
      o.steps_per_epoch = steps_per_epoch;
      o.value_dtype = values;
      return std::make_unique<DgcCompressor>(o);
    };
  };
  // The weights (layers 0 and 2) are compressed; the biases go dense and keep no residual.
  auto dgc_residual = [](Compressor& c, std::size_t l) {
    return l % 2 == 0 ? dynamic_cast<DgcCompressor&>(c).residual(l) : std::span<const float>();
  };
  return {
      {"quantize", [] { return std::make_unique<QuantizeCompressor>(QuantizeOptions{.bits = 3, .bucket_size = 64}); },
       quant_residual},
      {"dgc", dgc({}, DType::kFloat32, 0), dgc_residual},
      {"dgc_fp16_values", dgc({}, DType::kFloat16, 0), dgc_residual},
      // Density 1 in the skipped step's epoch: a dense step that flushes v (sparse before).
      {"dgc_flush", dgc({0.05, 0.05, 1.0}, DType::kFloat32, 1), dgc_residual},
  };
}

void PrintTo(const SkipCase& c, std::ostream* os) { *os << c.name; }

class SkipStep : public ::testing::TestWithParam<SkipCase> {};

TEST_P(SkipStep, ErrorFeedbackKeepsWhatTheSkippedStepSent) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const SkipCase& c = GetParam();
  const auto layers = model();
  Exchanger ex(comm, c.make(), layers, ExchangerOptions{.bucket_bytes = 256, .nonfinite = NonFinitePolicy::kSkipStep});
  const std::size_t L = layers.size();
  std::vector<std::vector<double>> put_in(L), applied(L);
  for (std::size_t l = 0; l < L; ++l) {
    put_in[l].assign(layers[l].numel, 0.0);
    applied[l].assign(layers[l].numel, 0.0);
  }
  for (int step = 0; step < 5; ++step) {
    Buffers b(layers, comm.rank(), step);
    if (step == 2 && comm.rank() == 0) b.grads[0][5] = std::nanf("");
    for (std::size_t l = 0; l < L; ++l) {
      for (std::size_t i = 0; i < b.grads[l].size(); ++i) put_in[l][i] += std::isfinite(b.grads[l][i]) ? b.grads[l][i] : 0.0f;
    }
    const StepStats& stats = ex.exchange(b.grad_views, b.out_views);
    ASSERT_TRUE(all_ranks(stats.skipped == (step == 2))) << "step " << step;
    for (std::size_t l = 0; l < L; ++l) {
      for (std::size_t i = 0; i < b.outs[l].size(); ++i) applied[l][i] += b.outs[l][i];
    }
  }
  const double p = comm.size();
  std::size_t checked = 0;
  for (std::size_t l = 0; l < L; ++l) {
    const std::span<const float> residual = c.residual(ex.compressor(), l);
    if (residual.empty()) continue;
    ++checked;
    // Sum over ranks of (what went in - what is left); p * applied must match it.
    std::vector<float> sent(layers[l].numel);
    for (std::size_t i = 0; i < sent.size(); ++i) sent[i] = static_cast<float>(put_in[l][i] - residual[i]);
    TensorView v = TensorView::of(std::span<float>(sent));
    comm.allreduce(v, v, ReduceOp::kSum)->wait();
    double worst = 0;
    std::size_t at = 0;
    for (std::size_t i = 0; i < sent.size(); ++i) {
      const double gap = std::abs(p * applied[l][i] - sent[i]);
      if (gap > worst) worst = gap, at = i;
    }
    // Gradients are at most p in size; 5 steps of float rounding stay far below 1e-3.
    EXPECT_TRUE(all_ranks(worst < 1e-3)) << c.name << " layer " << layers[l].name << ": element " << at
                                         << " is off by " << worst << " (sent and lost in the skipped step?)";
  }
  EXPECT_GT(checked, 0u);
}

INSTANTIATE_TEST_SUITE_P(Policies, SkipStep, ::testing::ValuesIn(skip_cases()),
                         [](const ::testing::TestParamInfo<SkipCase>& info) { return std::string(info.param.name); });

// ---- corrupt bytes through the allgather ---------------------------------------------------

// Fault injection over the real transport: forwards every collective to MPI and, when an
// allgather completes, applies `corrupt` to what this rank received (as a flipped bit on
// the wire or a buggy peer would). Every rank corrupts the same way, so every rank must
// reject the step.
class CorruptingCommunicator final : public Communicator {
 public:
  using Corruption = std::function<void(std::byte* recv, std::size_t block_bytes, int world)>;
  CorruptingCommunicator(Communicator& inner, Corruption corrupt) : inner_(inner), corrupt_(std::move(corrupt)) {}

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  Device device() const override { return inner_.device(); }
  std::string describe() const override { return "Corrupting(" + inner_.describe() + ")"; }
  WorkHandle allreduce(TensorView s, TensorView r, ReduceOp op) override { return inner_.allreduce(s, r, op); }
  WorkHandle allgather(TensorView send, TensorView recv) override {
    auto after = [this, recv] {
      corrupt_(static_cast<std::byte*>(recv.data()), recv.nbytes() / static_cast<std::size_t>(size()), size());
    };
    return WorkHandle(new Corrupted(inner_.allgather(send, recv), after));
  }
  WorkHandle allgatherv(TensorView s, TensorView r, std::span<const std::size_t> c) override {
    return inner_.allgatherv(s, r, c);
  }
  WorkHandle alltoall(TensorView s, TensorView r) override { return inner_.alltoall(s, r); }
  WorkHandle alltoallv(TensorView s, std::span<const std::size_t> sc, TensorView r,
                       std::span<const std::size_t> rc) override {
    return inner_.alltoallv(s, sc, r, rc);
  }
  WorkHandle broadcast(TensorView b, int root) override { return inner_.broadcast(b, root); }
  WorkHandle barrier() override { return inner_.barrier(); }
  void abort(const std::string& reason) override { inner_.abort(reason); }

 private:
  class Corrupted final : public Work {
   public:
    Corrupted(WorkHandle inner, std::function<void()> after) : inner_(std::move(inner)), after_(std::move(after)) {}
    void wait() override {
      inner_->wait();
      finish();
    }
    bool test() override {
      const bool done = inner_->test();
      if (done) finish();
      return done;
    }

   private:
    void finish() {
      if (!applied_) after_();
      applied_ = true;
    }
    WorkHandle inner_;
    std::function<void()> after_;
    bool applied_ = false;
  };

  Communicator& inner_;
  Corruption corrupt_;
};

struct Corruption {
  const char* name;
  std::function<std::unique_ptr<Compressor>()> make;
  std::size_t offset;  // byte of the last rank's block to overwrite: 0 is the framing's layer count
  std::uint8_t value;
  const char* needle;  // expected in the message on every rank
};

// One sparse layer, so a block is [u32 layer count, u32 non-finite count] then the payload.
std::vector<LayerSpec> one_layer() { return {{"w", 256, 2}}; }
constexpr std::size_t kPayload = 8;

std::vector<Corruption> corruptions() {
  auto dgc = [] {
    DgcOptions o;
    o.density = 0.05;  // k = 13
    o.warmup_densities = {};
    o.dense_fallback = false;
    return std::make_unique<DgcCompressor>(o);
  };
  auto quantize = [] { return std::make_unique<QuantizeCompressor>(QuantizeOptions{.bits = 4, .bucket_size = 64}); };
  return {
      {"framing_layer_count_dgc", dgc, 0, 7, "framed 7 layers in a group of 1"},
      {"framing_layer_count_quantize", quantize, 0, 0, "framed 0 layers in a group of 1"},
      // DGC payload: u32 count, then u32 indices; the first index gains 256 (= n).
      {"dgc_count_over_k", dgc, kPayload, 200, ""},
      {"dgc_index_out_of_range", dgc, kPayload + 5, 1, ""},
      // Quantize payload header: byte 1 is the bit width.
      {"quantize_header_bits", quantize, kPayload + 1, 5, ""},
  };
}

class CorruptAllgather : public ::testing::TestWithParam<Corruption> {};

TEST_P(CorruptAllgather, RejectedOnEveryRankWithoutWritingOut) {
  MpiCommunicator mpi(MPI_COMM_WORLD);
  const Corruption& c = GetParam();
  CorruptingCommunicator comm(mpi, [&](std::byte* recv, std::size_t block, int world) {
    recv[static_cast<std::size_t>(world - 1) * block + c.offset] = static_cast<std::byte>(c.value);
  });
  Exchanger ex(comm, c.make(), one_layer());
  Buffers b(one_layer(), comm.rank(), 0);
  ErrorCode code{};
  std::string message;
  try {
    ex.exchange(b.grad_views, b.out_views);
  } catch (const Error& e) {
    code = e.code();
    message = e.message();
  }
  EXPECT_TRUE(all_ranks(code == ErrorCode::kCorruptPayload)) << c.name << ": " << message;
  EXPECT_NE(message.find(c.needle), std::string::npos) << message;
  EXPECT_TRUE(std::all_of(b.outs[0].begin(), b.outs[0].end(), [](float x) { return x == -9.0f; }))
      << c.name << ": the output was written before the payload was rejected";
}

INSTANTIATE_TEST_SUITE_P(Payloads, CorruptAllgather, ::testing::ValuesIn(corruptions()),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace gradcomm
