// A rank dying mid-training. Run by CTest in two ways:
// - as every MPI test (2, 3, 4 ranks): nobody dies, and the run must finish with the same
//   parameters on every rank (the control for the kill run);
// - by tests/mpi/dead_peer.sh with GRADCOMM_TEST_KILL_{RANK,STEP,SIGNAL} set: that rank
//   sends itself the signal at that step (SIGKILL: it dies; SIGSTOP: it hangs), and the
//   script checks that the job ends within the time limit with a non-zero exit and a
//   message naming the dead rank or the collective the others were waiting in.
//   GRADCOMM_TEST_TIMEOUT_MS sets MpiCommunicatorOptions::collective_timeout.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "gradcomm/gradcomm.h"
#include "mpi/mpi_test_util.h"

namespace gradcomm {
namespace {

int env_int(const char* name, int fallback) {
  const char* value = std::getenv(name);
  return value ? std::atoi(value) : fallback;
}

TEST(DeadPeer, TrainingEndsOnEveryRankWhenARankDies) {
  MpiCommunicator comm(MPI_COMM_WORLD,
                       {.collective_timeout = std::chrono::milliseconds(env_int("GRADCOMM_TEST_TIMEOUT_MS", 0))});
  const int kill_signal = env_int("GRADCOMM_TEST_KILL_SIGNAL", SIGKILL);
  const int kill_rank = env_int("GRADCOMM_TEST_KILL_RANK", -1);
  const int kill_step = env_int("GRADCOMM_TEST_KILL_STEP", -1);
  const std::vector<LayerSpec> layers = {{"fc1.weight", 4096, 2}, {"fc1.bias", 64, 1}, {"fc2.weight", 640, 2}};
  Exchanger ex(comm, std::make_unique<DenseCompressor>(), layers);
  std::vector<std::vector<float>> params, grads;
  std::vector<TensorView> grad_views;
  for (const LayerSpec& l : layers) {
    params.emplace_back(l.numel, 1.0f);
    grads.emplace_back(l.numel);
  }
  for (auto& g : grads) grad_views.push_back(TensorView::of(std::span<float>(g)));
  constexpr int kSteps = 40;
  for (int step = 0; step < kSteps; ++step) {
    if (comm.rank() == kill_rank && step == kill_step) {
      std::fprintf(stderr, "dead-peer test: rank %d kills itself at step %d (signal %d)\n", comm.rank(), step,
                   kill_signal);
      std::fflush(stderr);
      ::raise(kill_signal);
    }
    for (std::size_t l = 0; l < layers.size(); ++l) {
      for (std::size_t i = 0; i < params[l].size(); ++i) {
        grads[l][i] = params[l][i] * 0.1f + std::sin(static_cast<float>(i + step * 7 + comm.rank()));
      }
    }
    try {
      ex.exchange(grad_views, grad_views);  // in place: grads become the averaged update
    } catch (const Error& e) {
      // What a trainer should do with a transport error: report it and end the whole job,
      // instead of leaving the other ranks waiting.
      std::fprintf(stderr, "rank %d, step %d: %s\n", comm.rank(), step, e.what());
      std::fflush(stderr);
      comm.abort(e.what());
    }
    for (std::size_t l = 0; l < layers.size(); ++l) {
      for (std::size_t i = 0; i < params[l].size(); ++i) params[l][i] -= 0.5f * grads[l][i];
    }
  }
  ASSERT_LT(kill_rank, 0) << "rank " << kill_rank << " was to die at step " << kill_step << " and did not";
  for (const auto& p : params) EXPECT_TRUE(testing::same_on_all_ranks(p));
}

}  // namespace
}  // namespace gradcomm
