// "onebit": the 1-bit compressed allreduce with worker and server error feedback
// (include/gradcomm/onebit.h), all layers fused into one call: one alltoall and one
// allgather per step, about 2(p-1)/p * n/8 bytes per rank. It has its own two-phase
// collectives, so it implements Runner directly instead of going through the Exchanger.
#include "gradcomm/onebit.h"
#include "gradcomm_bench/runner.h"

namespace gradcomm::bench {
namespace {

class OneBitRunner final : public Runner {
 public:
  OneBitRunner(Communicator& comm, const std::vector<LayerSpec>& layers) : comm_(comm) {
    std::vector<std::size_t> numels;
    for (const LayerSpec& layer : layers) {
      numels.push_back(layer.numel);
      states_.emplace_back(layer.numel, comm.size());
    }
    for (OneBitErrorState& state : states_) state_ptrs_.push_back(&state);
    workspace_.resize(onebit_workspace_bytes(numels, comm.size()));
  }

  // The payload is reduced (summed) across ranks, as by an allreduce; busbw uses its factor.
  Collective collective() const override { return Collective::kAllreduce; }

  CheckBound bound() const override {
    // Each output is +-(one server scale), an RMS of values no larger than the inputs'
    // largest magnitude (< 1 here), so it is within 1 of the average: a sanity bound that
    // catches garbage and NaN. The algorithm itself is checked against a simulation of all
    // ranks in tests/mpi/test_onebit.cpp.
    return {1.0, 1.0, "1-bit signs: |out| is a server scale <= max|x| < 1: |out-avg| <= 1 + |avg|"};
  }

  void step(std::span<const TensorView> grads, std::span<const TensorView> outs) override {
    compressed_allreduce(comm_, grads, state_ptrs_, outs,
                         TensorView(workspace_.data(), workspace_.size(), DType::kUInt8));
  }

 private:
  Communicator& comm_;
  std::vector<OneBitErrorState> states_;
  std::vector<OneBitErrorState*> state_ptrs_;
  std::vector<std::byte> workspace_;
};

}  // namespace

std::unique_ptr<Runner> make_onebit_runner(Communicator& comm, std::vector<LayerSpec> layers,
                                           const RunnerConfig& /*config*/) {
  return std::make_unique<OneBitRunner>(comm, layers);
}

}  // namespace gradcomm::bench
