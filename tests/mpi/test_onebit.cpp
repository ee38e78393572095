// 1-bit Adam under mpirun (2, 3, 4 ranks). compressed_allreduce: against a
// single-process simulation of all ranks written as plain loops, bitwise agreement
// across ranks, the error-feedback invariants, edge sizes and the exact collective
// count. OneBitAdam: against the reference update written as plain loops (DeepSpeed's
// OnebitAdam with bias_correction off), warm-up against dense Adam, save/restore.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <limits>
#include <random>
#include <vector>

#include "gradcomm/mpi_communicator.h"
#include "gradcomm/onebit.h"
#include "mpi/mpi_test_util.h"

namespace gradcomm {
namespace {

using testing::all_ranks;
using testing::same_on_all_ranks;
using testing::world_rank;
using testing::world_size;

// Input of `rank` for tensor `tensor` at `step`: every rank can build every rank's input.
std::vector<float> make_input(std::size_t n, int rank, int step, int tensor) {
  std::mt19937 gen(static_cast<unsigned>(1000003 * rank + 7919 * step + 31 * tensor + 17));
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> x(n);
  for (float& v : x) v = dist(gen) * (1.0f + static_cast<float>(rank));
  return x;
}

// The algorithm of docs/algorithms/onebit-adam.md for all ranks at once, in plain loops.
struct Simulation {
  int p;
  std::size_t n, padded, chunk;
  std::vector<std::vector<float>> ew, es;  // by rank
  std::vector<float> out;
  std::vector<float> worker_scale, server_scale;  // by rank, last call

  Simulation(std::size_t numel, int ranks) : p(ranks), n(numel) {
    padded = (n + 8 * p - 1) / (8 * p) * (8 * p);
    chunk = padded / p;
    ew.assign(p, std::vector<float>(padded, 0.0f));
    es.assign(p, std::vector<float>(chunk, 0.0f));
    out.assign(n, 0.0f);
    worker_scale.assign(p, 0.0f);
    server_scale.assign(p, 0.0f);
  }

  void run(const std::vector<std::vector<float>>& xs) {
    if (padded == 0) return;
    std::vector<std::vector<char>> sign(p, std::vector<char>(padded));
    for (int r = 0; r < p; ++r) {
      std::vector<float> v(padded);
      double sumsq = 0;
      for (std::size_t i = 0; i < padded; ++i) {
        const float x = i < n && std::isfinite(xs[r][i]) ? xs[r][i] : 0.0f;
        v[i] = x + ew[r][i];
        sumsq += double(v[i]) * double(v[i]);
      }
      const float s = static_cast<float>(std::sqrt(sumsq / double(padded)));
      worker_scale[r] = s;
      for (std::size_t i = 0; i < padded; ++i) {
        sign[r][i] = v[i] >= 0.0f;
        ew[r][i] = v[i] - (sign[r][i] ? s : -s);
      }
    }
    for (int j = 0; j < p; ++j) {
      std::vector<float> y(chunk);
      double sumsq = 0;
      for (std::size_t i = 0; i < chunk; ++i) {
        float acc = 0.0f;
        for (int r = 0; r < p; ++r) acc += sign[r][j * chunk + i] ? worker_scale[r] : -worker_scale[r];
        y[i] = acc / static_cast<float>(p) + es[j][i];
        sumsq += double(y[i]) * double(y[i]);
      }
      const float s = static_cast<float>(std::sqrt(sumsq / double(chunk)));
      server_scale[j] = s;
      for (std::size_t i = 0; i < chunk; ++i) {
        const bool c = y[i] >= 0.0f;
        es[j][i] = y[i] - (c ? s : -s);
        if (j * chunk + i < n) out[j * chunk + i] = c ? s : -s;
      }
    }
  }
};

std::vector<float> to_vector(TensorView t) {
  const auto s = t.span<const float>();
  return {s.begin(), s.end()};
}

TensorView view(std::vector<float>& v) { return TensorView::of(std::span<float>(v)); }
TensorView view(std::vector<std::byte>& v) { return TensorView(v.data(), v.size(), DType::kUInt8); }

// One compressed_allreduce of host vectors.
OneBitResult allreduce(Communicator& comm, std::vector<float>& x, OneBitErrorState& state,
                       std::vector<float>& out, std::vector<std::byte>& workspace) {
  return compressed_allreduce(comm, view(x), state, view(out), view(workspace));
}

// |a - b| <= 1e-6 relative (to the larger magnitude; an absolute floor for values near 0).
::testing::AssertionResult close(const std::vector<float>& got, const std::vector<float>& want,
                                 const char* what, float floor = 1e-30f) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << what << ": sizes " << got.size() << " vs " << want.size();
  }
  for (std::size_t i = 0; i < got.size(); ++i) {
    const float tol = 1e-6f * std::max({std::fabs(got[i]), std::fabs(want[i]), floor});
    if (!(std::fabs(got[i] - want[i]) <= tol)) {
      return ::testing::AssertionFailure() << what << "[" << i << "] = " << got[i] << ", simulation "
                                           << want[i] << " (rank " << world_rank() << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

// One tensor's allreduce setup: the communicator, its error state and workspace.
struct OneTensor {
  MpiCommunicator comm{MPI_COMM_WORLD};
  int p = comm.size();
  int rank = comm.rank();
  std::size_t n;
  OneBitErrorState state;
  std::vector<std::byte> ws;
  explicit OneTensor(std::size_t numel) : n(numel), state(numel, p), ws(onebit_workspace_bytes(numel, p)) {}
  OneBitResult run(std::vector<float>& x, std::vector<float>& out) {
    return allreduce(comm, x, state, out, ws);
  }
};

class OneBitAllreduce : public ::testing::TestWithParam<std::size_t> {};

TEST_P(OneBitAllreduce, EqualsSimulationOfAllRanksOverSteps) {
  OneTensor one(GetParam());
  Communicator& comm = one.comm;
  const int p = one.p, rank = one.rank;
  const std::size_t n = one.n;
  OneBitErrorState& state = one.state;
  Simulation sim(n, p);
  for (int step = 0; step < 4; ++step) {
    std::vector<std::vector<float>> xs;
    for (int r = 0; r < p; ++r) xs.push_back(make_input(n, r, step, 0));
    sim.run(xs);
    std::vector<float> x = xs[rank], out(n, -7.0f);
    comm.reset_traffic();
    one.run(x, out);
    EXPECT_EQ(comm.traffic().collectives, n == 0 ? 0u : 2u);
    const std::size_t numels[1] = {n};
    EXPECT_EQ(comm.traffic().bytes_sent, n == 0 ? 0u : onebit_wire_bytes(numels, p));
    EXPECT_TRUE(close(out, sim.out, "out")) << "n=" << n << " step " << step;
    // Error values can be tiny differences of nearly equal numbers: compare with a floor at
    // the scale's rounding (1e-6 of the scale that produced them).
    EXPECT_TRUE(close(to_vector(state.worker_error()), sim.ew[rank], "worker error",
                      sim.worker_scale[rank]))
        << "n=" << n << " step " << step;
    EXPECT_TRUE(close(to_vector(state.server_error()), sim.es[rank], "server error",
                      sim.server_scale[rank]))
        << "n=" << n << " step " << step;
    EXPECT_TRUE(same_on_all_ranks(out)) << "n=" << n << " step " << step;
  }
}

// Odd lengths, lengths below 8p, exact multiples, and zero.
INSTANTIATE_TEST_SUITE_P(Lengths, OneBitAllreduce,
                         ::testing::Values(0, 1, 2, 3, 7, 24, 96, 97, 1001, 4099, 65537));

// x + e_w(before) = s_w * sign + e_w(after) with one s_w = ||x + e_w(before)|| / sqrt(N),
// and on the server, for the chunk this rank owns:
//   mean over ranks of (s_w * sign)_r + e_s(before) = out + e_s(after).
TEST(OneBitAllreduce, ErrorFeedbackLosesNothing) {
  OneTensor one(3001);
  const int p = one.p, rank = one.rank;
  const std::size_t n = one.n;
  OneBitErrorState& state = one.state;
  const std::size_t padded = state.padded_numel(), chunk = state.chunk_numel();
  for (int step = 0; step < 3; ++step) {
    std::vector<float> x = make_input(n, rank, step, 1), out(n);
    const std::vector<float> ew_before = to_vector(state.worker_error());
    const std::vector<float> es_before = to_vector(state.server_error());
    one.run(x, out);
    const std::vector<float> ew_after = to_vector(state.worker_error());
    const std::vector<float> es_after = to_vector(state.server_error());
    double sumsq = 0;
    std::vector<double> v(padded);
    for (std::size_t i = 0; i < padded; ++i) {
      v[i] = (i < n ? double(x[i]) : 0.0) + double(ew_before[i]);
      sumsq += v[i] * v[i];
    }
    const double s = std::sqrt(sumsq / double(padded));
    // What this rank sent: s_w * sign = v - e_w(after), one magnitude, the sign of v.
    std::vector<float> sent(padded);
    for (std::size_t i = 0; i < padded; ++i) {
      const double signed_scale = v[i] >= 0 ? s : -s;
      ASSERT_NEAR(v[i], signed_scale + double(ew_after[i]), 4e-7 * (std::fabs(v[i]) + s))
          << "worker element " << i << " step " << step << " rank " << rank;
      sent[i] = static_cast<float>(v[i] - double(ew_after[i]));
    }
    std::vector<float> all_sent(padded * p);
    MPI_Allgather(sent.data(), static_cast<int>(padded), MPI_FLOAT, all_sent.data(),
                  static_cast<int>(padded), MPI_FLOAT, MPI_COMM_WORLD);
    for (std::size_t i = 0; i < chunk; ++i) {
      const std::size_t g = rank * chunk + i;
      double mean = 0, magnitude = 0;
      for (int r = 0; r < p; ++r) {
        mean += all_sent[r * padded + g];
        magnitude += std::fabs(all_sent[r * padded + g]);
      }
      mean /= p;
      const double lhs = mean + es_before[i];
      const double rhs = (g < n ? double(out[g]) : 0.0) + es_after[i];
      if (g < n) {
        ASSERT_NEAR(lhs, rhs, 4e-7 * (magnitude + std::fabs(es_before[i]) + std::fabs(out[g])))
            << "server element " << i << " step " << step << " rank " << rank;
      }
    }
  }
}

TEST(OneBitAllreduce, FusedTensorsMatchSeparateCallsInTwoCollectives) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int p = comm.size(), rank = comm.rank();
  const std::vector<std::size_t> numels = {5, 0, 1000, 1, 333};
  const std::size_t count = numels.size();
  std::vector<OneBitErrorState> fused_states, single_states;
  for (std::size_t n : numels) {
    fused_states.emplace_back(n, p);
    single_states.emplace_back(n, p);
  }
  std::vector<std::byte> fused_ws(onebit_workspace_bytes(numels, p));
  for (int step = 0; step < 3; ++step) {
    std::vector<std::vector<float>> x(count), fused_out(count), single_out(count);
    std::vector<TensorView> xs, outs;
    std::vector<OneBitErrorState*> states;
    for (std::size_t t = 0; t < count; ++t) {
      x[t] = make_input(numels[t], rank, step, static_cast<int>(t));
      fused_out[t].assign(numels[t], 0.0f);
      single_out[t].assign(numels[t], 0.0f);
      xs.push_back(TensorView::of(std::span<float>(x[t])));
      outs.push_back(TensorView::of(std::span<float>(fused_out[t])));
      states.push_back(&fused_states[t]);
    }
    comm.reset_traffic();
    compressed_allreduce(comm, xs, states, outs,
                         TensorView(fused_ws.data(), fused_ws.size(), DType::kUInt8));
    EXPECT_EQ(comm.traffic().collectives, 2u);
    EXPECT_EQ(comm.traffic().bytes_sent, onebit_wire_bytes(numels, p));
    for (std::size_t t = 0; t < count; ++t) {
      std::vector<std::byte> ws(onebit_workspace_bytes(numels[t], p));
      allreduce(comm, x[t], single_states[t], single_out[t], ws);
      // Same per-tensor scales and errors: the fused call is bitwise the separate calls.
      EXPECT_EQ(fused_out[t], single_out[t]) << "tensor " << t << " step " << step;
      EXPECT_EQ(fused_states[t].save(), single_states[t].save()) << "tensor " << t;
      EXPECT_TRUE(same_on_all_ranks(fused_out[t]));
    }
  }
}

TEST(OneBitAllreduce, OutputMayAliasInput) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int p = comm.size(), rank = comm.rank();
  const std::size_t n = 777;
  OneBitErrorState a(n, p), b(n, p);
  std::vector<std::byte> ws(onebit_workspace_bytes(n, p));
  std::vector<float> x = make_input(n, rank, 0, 2), inplace = x, out(n);
  allreduce(comm, x, a, out, ws);
  allreduce(comm, inplace, b, inplace, ws);
  EXPECT_EQ(inplace, out);
}

TEST(OneBitAllreduce, AllZeroInputGivesZeroAndNoNaN) {
  OneTensor one(1003);
  const std::size_t n = one.n;
  OneBitErrorState& state = one.state;
  for (int step = 0; step < 2; ++step) {
    std::vector<float> x(n, 0.0f), out(n, 5.0f);
    one.run(x, out);
    for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], 0.0f) << i;
    for (float e : to_vector(state.worker_error())) ASSERT_EQ(e, 0.0f);
    for (float e : to_vector(state.server_error())) ASSERT_EQ(e, 0.0f);
  }
}

TEST(OneBitAllreduce, NonFiniteInputsAreCountedAndSentAsZero) {
  OneTensor one(101);
  const int p = one.p, rank = one.rank;
  const std::size_t n = one.n;
  OneBitErrorState& state = one.state;
  std::vector<std::vector<float>> xs;
  for (int r = 0; r < p; ++r) {
    xs.push_back(make_input(n, r, 0, 3));
    xs[r][3] = std::numeric_limits<float>::quiet_NaN();
    xs[r][50 + r] = std::numeric_limits<float>::infinity();
  }
  Simulation sim(n, p);
  sim.run(xs);  // treats non-finite as 0
  std::vector<float> x = xs[rank], out(n);
  const OneBitResult result =
      one.run(x, out);
  EXPECT_EQ(result.nonfinite, 2u);
  EXPECT_TRUE(close(out, sim.out, "out"));
  for (float e : to_vector(state.worker_error())) ASSERT_TRUE(std::isfinite(e));
}

// Finite inputs near FLT_MAX (a diverging momentum) whose sum with the carried error
// overflows float make an infinite scale: every rank must report it as non-finite input,
// not as a corrupt payload.
TEST(OneBitAllreduce, OverflowingScaleIsNonFiniteOnEveryRank) {
  OneTensor one(515);
  std::vector<float> x = make_input(one.n, one.rank, 0, 4), out(one.n);
  if (one.rank == one.p - 1) std::fill(x.begin(), x.begin() + 8, 3e38f);
  one.run(x, out);  // finite: the scale is the RMS; the error keeps about 2.6e38
  ErrorCode code{};
  std::string message;
  try {
    one.run(x, out);  // 3e38 + 2.6e38 overflows
  } catch (const Error& e) {
    code = e.code();
    message = e.message();
  }
  EXPECT_TRUE(all_ranks(code == ErrorCode::kNonFinite)) << message;
  EXPECT_NE(message.find("rank " + std::to_string(one.p - 1) + " sent scale inf"), std::string::npos) << message;
}

TEST(OneBitAllreduce, SaveRestoreContinuesBitwise) {
  OneTensor one(515);
  Communicator& comm = one.comm;
  const int p = one.p, rank = one.rank;
  const std::size_t n = one.n;
  OneBitErrorState& state = one.state;
  std::vector<float> out(n), again(n);
  for (int step = 0; step < 2; ++step) {
    std::vector<float> x = make_input(n, rank, step, 4);
    one.run(x, out);
  }
  const std::vector<std::byte> saved = state.save();
  std::vector<float> x = make_input(n, rank, 2, 4);
  one.run(x, out);
  const std::vector<std::byte> after = state.save();

  OneBitErrorState restored(n, p);
  restored.load(saved);
  allreduce(comm, x, restored, again, one.ws);
  EXPECT_EQ(again, out);
  EXPECT_EQ(restored.save(), after);
  // Each rank's errors are its own: they differ between ranks, and all of them survive.
  EXPECT_FALSE(same_on_all_ranks(saved));

  OneBitErrorState other(n + 1, p);
  try {
    other.load(saved);
    ADD_FAILURE() << "a state of another length was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kCorruptPayload);
    EXPECT_NE(e.message().find("numel 515"), std::string::npos) << e.message();
  }
  std::vector<std::byte> truncated(saved.begin(), saved.end() - 4);
  EXPECT_THROW(restored.load(truncated), Error);
}

TEST(OneBitAllreduce, RefusesMismatchedStateAndSmallWorkspaceOnEveryRank) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int p = comm.size();
  const std::size_t n = 64;
  std::vector<float> x(n, 1.0f), out(n);
  std::vector<std::byte> ws(onebit_workspace_bytes(n, p));
  OneBitErrorState wrong_world(n, p + 1), wrong_length(n - 1, p), right(n, p);
  const TensorView wsv(ws.data(), ws.size(), DType::kUInt8);
  const TensorView xv = TensorView::of(std::span<float>(x)), ov = TensorView::of(std::span<float>(out));
  try {
    compressed_allreduce(comm, xv, wrong_world, ov, wsv);
    ADD_FAILURE() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kSizeMismatch);
    EXPECT_NE(e.message().find("over " + std::to_string(p + 1) + " ranks"), std::string::npos) << e.message();
  }
  EXPECT_THROW(compressed_allreduce(comm, xv, wrong_length, ov, wsv), Error);
  EXPECT_THROW(compressed_allreduce(comm, xv, right, ov, TensorView(ws.data(), ws.size() - 1, DType::kUInt8)),
               Error);
  // Nothing was sent by the refused calls: the next real call still pairs up on all ranks.
  compressed_allreduce(comm, xv, right, ov, wsv);
  EXPECT_TRUE(same_on_all_ranks(out));
  EXPECT_TRUE(all_ranks(true));
}

// ---- OneBitAdam -----------------------------------------------------------------------------

// Gradients that are multiples of 2^-10 below 1 in magnitude: their sum over ranks is
// exact in any order, so the reference does not depend on MPI's reduction order.
std::vector<float> dyadic_grad(std::size_t n, int rank, int step, int param) {
  std::mt19937 gen(static_cast<unsigned>(7 * rank + 1009 * step + 101 * param + 3));
  std::uniform_int_distribution<int> dist(-1000, 1000);
  std::vector<float> g(n);
  for (float& v : g) v = static_cast<float>(dist(gen)) * 0x1p-10f;
  return g;
}

struct ParamSpec {
  std::size_t n;
  bool compressed;
  bool masked;  // every 7th coordinate masked out
};

std::vector<float> initial_values(std::size_t n, int param) {
  std::vector<float> w(n);
  for (std::size_t i = 0; i < n; ++i) w[i] = std::sin(0.37f * float(i) + float(param)) * 0.5f;
  return w;
}

std::vector<float> mask_for(const ParamSpec& spec) {
  if (!spec.masked) return {};
  std::vector<float> mask(spec.n, 1.0f);
  for (std::size_t i = 0; i < spec.n; i += 7) mask[i] = 0.0f;
  return mask;
}

// The reference update for all ranks in plain loops: warm-up Adam on the averaged
// gradient; then frozen v, local momentum, the simulated 1-bit allreduce of momentum
// (or of m / (sqrt(v) + eps) with precondition), the mask, and
// p += -lr * (m / (sqrt(v) + eps) + wd * p). Bias correction off, as in DeepSpeed.
struct ReferenceAdam {
  OneBitAdamOptions o;
  int p;
  std::vector<ParamSpec> specs;
  std::vector<std::vector<float>> w, m, v;
  std::vector<Simulation> sims;  // by param (used for compressed ones)
  std::int64_t step = 0;

  ReferenceAdam(OneBitAdamOptions options, int ranks, std::vector<ParamSpec> params)
      : o(options), p(ranks), specs(std::move(params)) {
    for (std::size_t i = 0; i < specs.size(); ++i) {
      w.push_back(initial_values(specs[i].n, int(i)));
      m.emplace_back(specs[i].n, 0.0f);
      v.emplace_back(specs[i].n, 0.0f);
      sims.emplace_back(specs[i].n, p);
    }
  }

  void adam(std::size_t i, const std::vector<float>& gbar) {
    for (std::size_t k = 0; k < specs[i].n; ++k) {
      m[i][k] = m[i][k] * o.beta1 + (1.0f - o.beta1) * gbar[k];
      v[i][k] = v[i][k] * o.beta2 + (1.0f - o.beta2) * gbar[k] * gbar[k];
      float update = m[i][k] / (std::sqrt(v[i][k]) + o.eps);
      if (o.weight_decay > 0.0f) update += o.weight_decay * w[i][k];
      w[i][k] += -o.lr * update;
    }
  }

  void run(int step_index) {
    const bool frozen = step >= o.freeze_step;
    for (std::size_t i = 0; i < specs.size(); ++i) {
      const std::size_t n = specs[i].n;
      std::vector<std::vector<float>> g;
      for (int r = 0; r < p; ++r) g.push_back(dyadic_grad(n, r, step_index, int(i)));
      if (!frozen || !specs[i].compressed) {
        std::vector<float> gbar(n, 0.0f);
        for (int r = 0; r < p; ++r)
          for (std::size_t k = 0; k < n; ++k) gbar[k] += g[r][k];
        for (float& x : gbar) x *= 1.0f / static_cast<float>(p);
        adam(i, gbar);
        continue;
      }
      std::vector<std::vector<float>> local(p, std::vector<float>(n));
      for (int r = 0; r < p; ++r) {
        for (std::size_t k = 0; k < n; ++k) {
          local[r][k] = m[i][k] * o.beta1 + (1.0f - o.beta1) * g[r][k];
          if (o.precondition) local[r][k] = local[r][k] / (std::sqrt(v[i][k]) + o.eps);
        }
      }
      sims[i].run(local);
      const std::vector<float> mask = mask_for(specs[i]);
      for (std::size_t k = 0; k < n; ++k) {
        float avg = sims[i].out[k];
        if (!mask.empty()) avg *= mask[k];
        float update;
        if (o.precondition) {
          m[i][k] = avg * (std::sqrt(v[i][k]) + o.eps);
          update = avg;
        } else {
          m[i][k] = avg;
          update = m[i][k] / (std::sqrt(v[i][k]) + o.eps);
        }
        if (o.weight_decay > 0.0f) update += o.weight_decay * w[i][k];
        w[i][k] += -o.lr * update;
      }
    }
    ++step;
  }
};

struct AdamRun {
  std::vector<std::vector<float>> w;
  std::unique_ptr<OneBitAdam> opt;

  AdamRun(Communicator& comm, const std::vector<ParamSpec>& specs, OneBitAdamOptions options) {
    std::vector<OneBitParam> params;
    for (std::size_t i = 0; i < specs.size(); ++i) w.push_back(initial_values(specs[i].n, int(i)));
    for (std::size_t i = 0; i < specs.size(); ++i) {
      params.push_back({std::string("param").append(std::to_string(i)), TensorView::of(std::span<float>(w[i])),
                        specs[i].compressed, mask_for(specs[i])});
    }
    opt = std::make_unique<OneBitAdam>(comm, std::move(params), options);
  }

  void step(int step_index, int rank) {
    std::vector<std::vector<float>> g;
    std::vector<TensorView> views;
    for (std::size_t i = 0; i < w.size(); ++i) g.push_back(dyadic_grad(w[i].size(), rank, step_index, int(i)));
    for (auto& x : g) views.push_back(TensorView::of(std::span<float>(x)));
    opt->step(views);
  }
};

class OneBitAdamReference : public ::testing::TestWithParam<bool> {};

// The headline parity test: parameters equal the reference to fp32 rounding through the
// warm-up, the freeze and the compression stage, with weight decay, a mask and an
// uncompressed group; and the compression stage runs no gradient allreduce for the
// compressed parameters (only the uncompressed group's, plus the two 1-bit collectives).
TEST_P(OneBitAdamReference, MatchesPlainLoopsThroughTheFreeze) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int p = comm.size(), rank = comm.rank();
  OneBitAdamOptions options;
  options.lr = 1e-2f;
  options.weight_decay = 0.01f;
  options.freeze_step = 3;
  options.precondition = GetParam();
  const std::vector<ParamSpec> specs = {{301, true, true}, {41, true, false}, {17, false, false}};
  ReferenceAdam ref(options, p, specs);
  AdamRun run(comm, specs, options);
  for (int step = 0; step < 9; ++step) {
    comm.reset_traffic();
    run.step(step, rank);
    ref.run(step);
    const bool compressed_stage = step >= options.freeze_step;
    EXPECT_EQ(run.opt->frozen(), step + 1 >= options.freeze_step);
    const std::size_t numels[2] = {301, 41};
    if (compressed_stage) {
      EXPECT_EQ(comm.traffic().collectives, 3u) << "step " << step;
      // The uncompressed group goes through the Exchanger's framing: its 68 payload bytes
      // padded to 8, then one float status element (docs/wire-format.md).
      EXPECT_EQ(comm.traffic().bytes_sent,
                allreduce_wire_bytes(72 + sizeof(float), p) + onebit_wire_bytes(numels, p));
    } else {
      EXPECT_EQ(comm.traffic().collectives, 1u) << "step " << step;
    }
    for (std::size_t i = 0; i < specs.size(); ++i) {
      // The floor: parameters are O(0.5) and move by lr * O(1) per step; one that passes
      // near 0 is compared at 1e-7 absolute (about one ulp of 0.5), not relative to itself,
      // because the norms behind the scales are summed in a different order than here.
      EXPECT_TRUE(close(run.w[i], ref.w[i], "param", 0.1f)) << "param " << i << " step " << step;
      EXPECT_TRUE(close(std::vector<float>(run.opt->momentum(i).begin(), run.opt->momentum(i).end()),
                        ref.m[i], "momentum", 1e-6f))
          << "param " << i << " step " << step;
      EXPECT_TRUE(same_on_all_ranks(run.w[i])) << "param " << i << " step " << step;
    }
    if (compressed_stage) {
      const auto m0 = run.opt->momentum(0);
      for (std::size_t k = 0; k < m0.size(); k += 7) ASSERT_EQ(m0[k], 0.0f) << "masked coordinate " << k;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Precondition, OneBitAdamReference, ::testing::Bool());

// Warm-up is dense Adam: with bias correction on, against torch.optim.Adam's update
// written out (m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)).
TEST(OneBitAdam, WarmupEqualsDenseAdamWithBiasCorrection) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int p = comm.size(), rank = comm.rank();
  OneBitAdamOptions options;
  options.lr = 3e-3f;
  options.freeze_step = 1000;
  options.bias_correction = true;
  const std::vector<ParamSpec> specs = {{123, true, false}, {9, false, false}};
  AdamRun run(comm, specs, options);
  std::vector<std::vector<float>> w, m, v;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    w.push_back(initial_values(specs[i].n, int(i)));
    m.emplace_back(specs[i].n, 0.0f);
    v.emplace_back(specs[i].n, 0.0f);
  }
  for (int step = 0; step < 5; ++step) {
    comm.reset_traffic();
    run.step(step, rank);
    EXPECT_EQ(comm.traffic().collectives, 1u);
    const double t = step + 1;
    for (std::size_t i = 0; i < specs.size(); ++i) {
      for (std::size_t k = 0; k < specs[i].n; ++k) {
        double gbar = 0;
        for (int r = 0; r < p; ++r) gbar += dyadic_grad(specs[i].n, r, step, int(i))[k];
        gbar /= p;
        m[i][k] = float(0.9 * m[i][k] + 0.1 * gbar);
        v[i][k] = float(0.999 * v[i][k] + 0.001 * gbar * gbar);
        const double mhat = m[i][k] / (1 - std::pow(0.9, t));
        const double vhat = v[i][k] / (1 - std::pow(0.999, t));
        w[i][k] = float(w[i][k] - 3e-3 * mhat / (std::sqrt(vhat) + 1e-8));
      }
      EXPECT_TRUE(close(run.w[i], w[i], "param", 1e-2f)) << "param " << i << " step " << step;
      EXPECT_TRUE(same_on_all_ranks(run.w[i]));
    }
  }
}

TEST(OneBitAdam, SaveRestoreContinuesBitwiseWithEveryRanksErrors) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int rank = comm.rank();
  OneBitAdamOptions options;
  options.freeze_step = 2;
  const std::vector<ParamSpec> specs = {{257, true, false}, {5, false, false}, {64, true, true}};
  AdamRun a(comm, specs, options);
  for (int step = 0; step < 4; ++step) a.step(step, rank);  // two steps into compression
  const std::vector<std::byte> saved = a.opt->save_state();
  const std::vector<std::vector<float>> w_saved = a.w;
  for (int step = 4; step < 7; ++step) a.step(step, rank);

  AdamRun b(comm, specs, options);
  b.w = w_saved;  // the parameters of the checkpoint (views point at b.w's buffers)
  b.opt->load_state(saved);
  EXPECT_EQ(b.opt->steps_done(), 4);
  EXPECT_TRUE(b.opt->frozen());
  for (int step = 4; step < 7; ++step) b.step(step, rank);
  EXPECT_EQ(a.w, b.w);
  EXPECT_EQ(a.opt->save_state(), b.opt->save_state());
  // The worker errors are per rank and were kept (the reference resets them on load).
  const OneBitErrorState& errors = b.opt->error_state(0);
  EXPECT_FALSE(same_on_all_ranks(errors.save()));

  std::vector<std::byte> other_rank = saved;
  const std::int32_t wrong = (rank + 1) % comm.size();
  std::memcpy(other_rank.data() + 12, &wrong, sizeof wrong);  // magic, version, size, rank
  try {
    b.opt->load_state(other_rank);
    ADD_FAILURE() << "loaded another rank's state";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kCorruptPayload);
    EXPECT_NE(e.message().find("saved by rank " + std::to_string(wrong)), std::string::npos) << e.message();
  }
  EXPECT_THROW(b.opt->load_state(std::span<const std::byte>(saved).first(saved.size() - 1)), Error);
  EXPECT_EQ(a.opt->save_state(), b.opt->save_state());  // a failed load changes nothing
}

TEST(OneBitAdam, RefusesBadSettingsAtConstructionOnEveryRank) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  std::vector<float> w(10);
  auto make = [&](OneBitAdamOptions o, std::vector<float> mask = {}, bool compressed = true) {
    std::vector<OneBitParam> params = {{"w", TensorView::of(std::span<float>(w)), compressed, std::move(mask)}};
    OneBitAdam opt(comm, std::move(params), o);
  };
  auto expect_invalid = [&](OneBitAdamOptions o, const std::string& words, std::vector<float> mask = {},
                            bool compressed = true) {
    try {
      make(o, std::move(mask), compressed);
      ADD_FAILURE() << "accepted: " << words;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
      EXPECT_NE(e.message().find(words), std::string::npos) << e.message();
    }
  };
  OneBitAdamOptions o;
  o.freeze_step = -1;
  expect_invalid(o, "freeze_step -1");
  o = {};
  o.beta1 = 1.0f;
  expect_invalid(o, "beta1 1");
  o = {};
  o.beta2 = -0.5f;
  expect_invalid(o, "beta2 -0.5");
  o = {};
  o.eps = 0.0f;
  expect_invalid(o, "eps 0");
  o = {};
  o.lr = std::numeric_limits<float>::quiet_NaN();
  expect_invalid(o, "lr nan");
  o = {};
  o.weight_decay = -1.0f;
  expect_invalid(o, "weight_decay -1");
  expect_invalid({}, "mask of 3", {1.0f, 0.0f, 1.0f});
  std::vector<float> half(10, 0.5f);
  expect_invalid({}, "only 0 and 1", half);
  expect_invalid({}, "is uncompressed", std::vector<float>(10, 1.0f), false);
  EXPECT_NO_THROW(make({}));
  // The same option checks without a communicator, for callers that build the optimizer later.
  o = {};
  o.freeze_step = 0;
  EXPECT_THROW(check_options(o), Error);
  EXPECT_NO_THROW(check_options({}));
  EXPECT_TRUE(all_ranks(true));
}

}  // namespace
}  // namespace gradcomm
