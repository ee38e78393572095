// Exchanger: the per-step engine. Layers are submitted as backward produces them; each is
// encoded and its collective started as soon as it is next in the agreed order, so the
// encoding of one layer overlaps the communication of the one before it. Layers whose
// payloads are summable are fused into buckets of up to `bucket_bytes`.
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

namespace gradcomm {

enum class NonFinitePolicy : std::uint8_t {
  kError,     // throw gradcomm::Error (kNonFinite) on every rank, naming layer and ranks
  kSkipStep,  // every rank gets a zero update for the whole step
  kZero,      // non-finite elements count as 0; the step goes on
};
const char* nonfinite_policy_name(NonFinitePolicy policy) noexcept;
NonFinitePolicy parse_nonfinite_policy(const std::string& name);

struct ExchangerOptions {
  std::size_t bucket_bytes = 4u << 20;  // fuse summable payloads up to this size
  NonFinitePolicy nonfinite = NonFinitePolicy::kError;
};

struct StepStats {
  std::uint64_t wire_bytes = 0;    // bytes this rank sent in the step (algorithm model)
  std::uint64_t payload_bytes = 0;  // bytes of payload this rank produced
  std::uint64_t collectives = 0;
  std::size_t nonfinite = 0;       // layers in which some rank saw a non-finite value this step
  bool skipped = false;            // the step was skipped (NonFinitePolicy::kSkipStep)
};

class Exchanger {
 public:
  // Registers `layers` (in forward order; backward submits them in reverse) and checks
  // that every rank registered the same layers with the same settings: a mismatch throws
  // gradcomm::Error (kSizeMismatch) on every rank naming the first differing layer.
  Exchanger(Communicator& comm, std::unique_ptr<Compressor> compressor,
            std::vector<LayerSpec> layers, ExchangerOptions options = {});
  ~Exchanger();
  Exchanger(const Exchanger&) = delete;
  Exchanger& operator=(const Exchanger&) = delete;

  // Starts a step. Layers are then submitted once each; `grad` is read, `out` receives
  // the averaged update after finish_step() and may alias `grad`. Both must stay valid
  // until finish_step() returns.
  void begin_step();
  void submit(std::size_t layer, TensorView grad, TensorView out);
  const StepStats& finish_step();

  // One whole step: submits every layer in backward order.
  const StepStats& exchange(std::span<const TensorView> grads, std::span<const TensorView> outs);

  Compressor& compressor() noexcept { return *compressor_; }
  const Compressor& compressor() const noexcept { return *compressor_; }
  Communicator& communicator() noexcept { return comm_; }
  std::span<const LayerSpec> layers() const noexcept { return layers_; }
  std::int64_t step() const noexcept { return step_; }
  // Sets the step counter (load_checkpoint does), so schedules resume where they stopped.
  // Only between steps; step >= 0.
  void restore_step(std::int64_t step);

 private:
  struct Impl;
  Communicator& comm_;
  std::unique_ptr<Compressor> compressor_;
  std::vector<LayerSpec> layers_;
  ExchangerOptions options_;
  std::int64_t step_ = 0;
  TrafficCounters traffic_at_begin_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace gradcomm
