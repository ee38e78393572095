// Exchanger: a StepEngine driven by a Communicator. Layers are submitted as backward
// produces them; each is encoded and its collective started as soon as it is next in the
// agreed order, so the encoding of one layer overlaps the communication of the one before
// it. Layers whose payloads are summable are fused into buckets of up to `bucket_bytes`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "gradcomm/communicator.h"
#include "gradcomm/compressor.h"
#include "gradcomm/layer.h"
#include "gradcomm/step_engine.h"

namespace gradcomm {

using ExchangerOptions = StepEngineOptions;

class Exchanger {
 public:
  // Registers `layers` (in forward order; backward submits them in reverse) and checks
  // that every rank registered the same layers with the same settings: a mismatch throws
  // gradcomm::Error (kSizeMismatch) on every rank naming the first differing layer.
  Exchanger(Communicator& comm, std::shared_ptr<Compressor> compressor,
            std::vector<LayerSpec> layers, ExchangerOptions options = {});
  ~Exchanger();
  Exchanger(const Exchanger&) = delete;
  Exchanger& operator=(const Exchanger&) = delete;

  // Starts a step. Layers are then submitted once each; `grad` is read, `out` receives
  // the averaged update after finish_step() and may alias `grad`. Both must stay valid
  // until finish_step() returns.
  void begin_step();
  void submit(std::size_t layer, TensorView grad, TensorView out);
  // Waits for the step's collectives, decodes, applies the non-finite policy.
  const StepStats& finish_step();

  // One whole step: submits every layer in backward order.
  const StepStats& exchange(std::span<const TensorView> grads, std::span<const TensorView> outs);

  Compressor& compressor() noexcept { return engine_.compressor(); }
  const Compressor& compressor() const noexcept { return engine_.compressor(); }
  Communicator& communicator() noexcept { return comm_; }
  StepEngine& engine() noexcept { return engine_; }
  std::span<const LayerSpec> layers() const noexcept { return engine_.layers(); }
  std::int64_t step() const noexcept { return step_; }
  // Sets the step counter (load_checkpoint does), so schedules resume where they stopped.
  // Only between steps; step >= 0.
  void restore_step(std::int64_t step);

 private:
  void issue_ready();

  Communicator& comm_;
  StepEngine engine_;
  std::int64_t step_ = 0;
  std::vector<WorkHandle> works_;  // by collective id, this step; grow-only
  std::size_t completed_ = 0;      // collectives of this step completed, in id order
};

}  // namespace gradcomm
