// Exchanger: a StepEngine driven by a Communicator. Layers are submitted as backward
// produces them; each is encoded and its collective started as soon as it is next in the
// agreed order, so the encoding of one layer overlaps the communication of the one before
// it. Layers whose payloads are summable are fused into buckets of up to `bucket_bytes`.
//
// Given host communicators, the exchange can run hierarchically: a dense reduce-scatter
// inside each host, the compressed exchange of 1/R shards across hosts, a dense allgather
// inside each host. With ExchangerOptions::exchange other than kCompressor (or hierarchy
// kAuto) the Exchanger measures the links at setup and plans per layer which exchange to
// use (docs/algorithms/sparse-allreduce.md, "Choosing").
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "gradcomm/communicator.h"
#include "gradcomm/compressor.h"
#include "gradcomm/exchange_plan.h"
#include "gradcomm/host_communicators.h"
#include "gradcomm/layer.h"
#include "gradcomm/step_engine.h"

namespace gradcomm {

using ExchangerOptions = StepEngineOptions;

namespace detail {
class EngineDriver;
class HierarchicalSteps;
}  // namespace detail

class Exchanger {
 public:
  // Registers `layers` (in forward order; backward submits them in reverse) and checks
  // that every rank registered the same layers with the same settings: a mismatch throws
  // gradcomm::Error (kSizeMismatch) on every rank naming the first differing layer.
  Exchanger(Communicator& comm, std::shared_ptr<Compressor> compressor,
            std::vector<LayerSpec> layers, ExchangerOptions options = {});
  // The same, able to run hierarchically over `hosts` (both given, every host with the same
  // number of ranks; see MpiHostCommunicators), as options.hierarchy says.
  Exchanger(Communicator& comm, HostCommunicators hosts, std::shared_ptr<Compressor> compressor,
            std::vector<LayerSpec> layers, ExchangerOptions options = {});
  ~Exchanger();
  Exchanger(const Exchanger&) = delete;
  Exchanger& operator=(const Exchanger&) = delete;

  // Starts a step. Layers are then submitted once each; `grad` is read, `out` receives
  // the averaged update after finish_step() and may alias `grad`. Both must stay valid
  // until finish_step() returns.
  // Layers on a CUDA device: the stream (cudaStream_t) the step's kernels run on; the
  // collectives are ordered after them and the decodes after the collectives by events
  // (NCCL) or host waits (host transports). finish_step() synchronises the host with the
  // stream once per step. Between steps only.
  void set_stream(void* cuda_stream);
  void begin_step();
  void submit(std::size_t layer, TensorView grad, TensorView out);
  // Waits for the step's collectives, decodes, applies the non-finite policy.
  const StepStats& finish_step();

  // One whole step: submits every layer in backward order.
  const StepStats& exchange(std::span<const TensorView> grads, std::span<const TensorView> outs);

  Compressor& compressor() noexcept { return engine_->compressor(); }
  const Compressor& compressor() const noexcept { return engine_->compressor(); }
  Communicator& communicator() noexcept { return comm_; }
  // The engine: over all ranks, or, hierarchical, over one rank per host with this rank's
  // shards as its layers (so its compressor holds the state of those shards).
  StepEngine& engine() noexcept { return *engine_; }
  std::span<const LayerSpec> layers() const noexcept { return layers_; }
  std::int64_t step() const noexcept { return step_; }
  // Sets the step counter (load_checkpoint does), so schedules resume where they stopped.
  // Only between steps; step >= 0.
  void restore_step(std::int64_t step);

  // The plan in force: per layer its exchange and the predicted times (empty with
  // ExchangeChoice::kCompressor and Hierarchy::kFlat, where nothing is planned).
  const ExchangePlan& plan() const noexcept { return plan_; }
  bool hierarchical() const noexcept { return hier_ != nullptr; }
  // The plan and the sparse allreduce's regions, identical on every rank (save_checkpoint
  // stores them as the section "gradcomm.exchange"), and back: a resumed run uses the
  // plan it was saved with. A blob of another topology or model is kInvalidArgument.
  std::vector<std::byte> save_exchange_state() const;
  void load_exchange_state(std::span<const std::byte> blob);

 private:
  void apply_plan();
  // agree_every_step: starts the step's layout agreement, and checks its answer before the
  // step's first collective.
  void start_layout_agreement();
  void check_layout_agreement();

  Communicator& comm_;
  std::vector<LayerSpec> layers_;
  ExchangePlan plan_;
  std::unique_ptr<detail::HierarchicalSteps> hier_;
  std::unique_ptr<StepEngine> engine_;
  std::unique_ptr<detail::EngineDriver> driver_;
  std::int64_t step_ = 0;
  StepStats stats_;  // hierarchical: the engine's, with the collectives inside the host
  struct LayoutAgreement;  // agree_every_step's buffers and work in flight
  std::unique_ptr<LayoutAgreement> agreement_;
};

}  // namespace gradcomm
