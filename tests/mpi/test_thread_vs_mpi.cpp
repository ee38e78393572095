// The same Exchanger job over MpiCommunicator (p MPI ranks) and over ThreadCommunicator
// (p threads inside rank 0): every rank's updates must be the same bits. What can differ
// is the order of a float sum (MPI's ring sums chunk c from rank c on, the threads in
// rank order), so the jobs use sums that are exact, or that only DGC's decode computes
// (in rank order on both), and inexact dense sums are compared bitwise on 2 ranks only.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <vector>

#include "gradcomm/dense.h"
#include "gradcomm/dgc.h"
#include "gradcomm/exchanger.h"
#include "gradcomm/mpi_communicator.h"
#include "gradcomm/thread_communicator.h"
#include "mpi/mpi_test_util.h"

namespace gradcomm {
namespace {

using testing::all_ranks;
using testing::world_rank;
using testing::world_size;

// Multiples of 1/64 below 1: any sum of up to 2^17 of them is exact in float32.
float exact_value(int rank, int step, std::size_t layer, std::size_t i) {
  return static_cast<float>(static_cast<int>((i * 31 + static_cast<std::size_t>(rank) * 17 +
                                              layer * 5 + static_cast<std::size_t>(step) * 3) %
                                             64) -
                            32) /
         64.0f;
}
float inexact_value(int rank, int step, std::size_t layer, std::size_t i) {
  return std::sin(static_cast<float>(i + 1) * 0.37f + static_cast<float>(layer + step)) *
         (rank + 1) * 0.01f;
}

// Every step's outputs of every layer, back to back.
using Job = std::function<std::vector<float>(Communicator&)>;

Job job(std::vector<LayerSpec> layers, std::function<std::shared_ptr<Compressor>()> make, int steps,
        float (*value)(int, int, std::size_t, std::size_t)) {
  return [=](Communicator& comm) {
    Exchanger ex(comm, make(), layers, {.bucket_bytes = 8192});
    std::vector<float> trace;
    for (int step = 0; step < steps; ++step) {
      std::vector<std::vector<float>> grads, outs;
      std::vector<TensorView> gv, ov;
      for (std::size_t l = 0; l < layers.size(); ++l) {
        grads.emplace_back(layers[l].numel);
        outs.emplace_back(layers[l].numel);
        for (std::size_t i = 0; i < layers[l].numel; ++i)
          grads[l][i] = value(comm.rank(), step, l, i);
      }
      for (std::size_t l = 0; l < layers.size(); ++l) {
        gv.push_back(TensorView::of(std::span<float>(grads[l])));
        ov.push_back(TensorView::of(std::span<float>(outs[l])));
      }
      ex.exchange(gv, ov);
      for (const auto& o : outs) trace.insert(trace.end(), o.begin(), o.end());
    }
    return trace;
  };
}

// Runs `run` over MPI on every rank and over p threads on rank 0; true on every rank iff
// each MPI rank's trace equals the thread rank's of the same number, bitwise.
bool same_over_threads_and_mpi(const Job& run) {
  MpiCommunicator mpi(MPI_COMM_WORLD);
  const int p = world_size();
  const std::vector<float> mine = run(mpi);
  std::vector<float> gathered(world_rank() == 0 ? mine.size() * static_cast<std::size_t>(p) : 0);
  MPI_Gather(mine.data(), static_cast<int>(mine.size()), MPI_FLOAT, gathered.data(),
             static_cast<int>(mine.size()), MPI_FLOAT, 0, MPI_COMM_WORLD);
  bool ok = true;
  if (world_rank() == 0) {
    std::vector<std::vector<float>> threads(static_cast<std::size_t>(p));
    ThreadCommunicator::run(p, [&](ThreadCommunicator& comm) {
      threads[static_cast<std::size_t>(comm.rank())] = run(comm);
    });
    for (int r = 0; r < p; ++r) {
      const std::vector<float>& t = threads[static_cast<std::size_t>(r)];
      const bool equal =
          t.size() == mine.size() &&
          std::equal(t.begin(), t.end(),
                     gathered.begin() + static_cast<std::ptrdiff_t>(r * mine.size()));
      EXPECT_TRUE(equal) << "rank " << r << " of " << p
                         << ": the thread run differs from the MPI run";
      ok = ok && equal;
    }
  }
  return all_ranks(ok);
}

std::vector<LayerSpec> dense_layers() {
  return {
      {"embed", 5000, 2}, {"empty", 0, 1}, {"fc1.w", 1001, 2}, {"fc1.b", 7, 1}, {"big", 30001, 2}};
}

TEST(ThreadVsMpi, DenseExactSumsAreBitwiseEqual) {
  for (DType wire : {DType::kFloat32, DType::kFloat16}) {
    EXPECT_TRUE(same_over_threads_and_mpi(job(
        dense_layers(), [=] { return std::make_shared<DenseCompressor>(DenseOptions{wire}); }, 3,
        exact_value)))
        << dtype_name(wire);
  }
}

TEST(ThreadVsMpi, DenseInexactSumsAreBitwiseEqualOnTwoRanks) {
  if (world_size() != 2)
    GTEST_SKIP() << "the order of an inexact sum differs between the two on 3+ ranks";
  EXPECT_TRUE(same_over_threads_and_mpi(job(
      dense_layers(), [] { return std::make_shared<DenseCompressor>(); }, 3, inexact_value)));
}

// No 1-D layer and no dense fallback: every layer is sparse, its sum made by DGC's decode.
TEST(ThreadVsMpi, DgcUpdatesAreBitwiseEqual) {
  const std::vector<LayerSpec> layers = {{"conv", 4099, 4}, {"fc", 2000, 2}, {"small", 33, 2}};
  for (DgcSelection selection : {DgcSelection::kSampled, DgcSelection::kExact}) {
    for (DType values : {DType::kFloat32, DType::kFloat16}) {
      auto make = [=] {
        DgcOptions o;
        o.density = 0.01;
        o.steps_per_epoch = 2;  // through the warm-up
        o.selection = selection;
        o.value_dtype = values;
        o.dense_fallback = false;
        return std::make_shared<DgcCompressor>(o);
      };
      EXPECT_TRUE(same_over_threads_and_mpi(job(layers, make, 10, inexact_value)))
          << (selection == DgcSelection::kExact ? "exact " : "sampled ") << dtype_name(values);
    }
  }
}

}  // namespace
}  // namespace gradcomm
