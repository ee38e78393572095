// Compressor: the interface every gradient compressor implements for the Exchanger.
//
// A compressor is a pure algorithm with per-layer state (residuals, momenta, RNG
// counters). It owns no communicator: it says which collective its payload needs and
// how large the payload is, encodes a gradient into a payload, and decodes what the
// collective delivered. The Exchanger moves the bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "gradcomm/layer.h"
#include "gradcomm/tensor.h"

namespace gradcomm {

enum class Collective : std::uint8_t {
  kAllreduce,  // payloads are summable: summed across ranks element by element
  kAllgather,  // payloads are opaque bytes: every rank receives all ranks' payloads
};

// What one layer puts on the wire in the current step.
struct LayerWire {
  Collective collective = Collective::kAllreduce;
  DType dtype = DType::kFloat32;  // allreduce: kFloat32 or kFloat16; allgather: kUInt8
  std::size_t count = 0;          // elements per rank

  std::size_t bytes() const { return count * dtype_size(dtype); }
};

struct EncodeResult {
  // Non-finite elements met in the input. Compressors treat them as 0 (they never enter
  // residuals or momenta); the Exchanger applies the NonFinitePolicy to the count.
  // For a layer on a CUDA device this is 0: the count goes to the device (see
  // ExecutionContext), so encode never waits for the device.
  std::size_t nonfinite = 0;
};

// Where a compressor's kernels run for layers on a CUDA device, set by the caller (the
// StepEngine) before each step's first encode. Layers on the CPU ignore it.
struct ExecutionContext {
  // cudaStream_t of the step: every kernel and copy of encode, decode and
  // on_step_skipped for a CUDA layer is ordered on it (nullptr: the legacy default stream).
  void* cuda_stream = nullptr;
  // Device array of one uint32 per layer, zeroed by the caller before the step: encode of
  // CUDA layer l adds the non-finite elements it met to nonfinite_counts[l] on the stream
  // (saturating at 2^32 - 1) instead of returning them. Null when no layer is on a device.
  std::uint32_t* nonfinite_counts = nullptr;
  // Device array of one uint32 per layer, set to 0xffffffff by the caller before the
  // step: decode of CUDA layer l checks the received payloads on the device and, when one
  // fails, writes the lowest failing rank to corrupt_payloads[l] and leaves the update 0,
  // instead of throwing (which would need the host to wait); the caller throws
  // kCorruptPayload at the end of the step. Null: decode waits for the stream and throws.
  std::uint32_t* corrupt_payloads = nullptr;
};

class Compressor {
 public:
  virtual ~Compressor() = default;

  virtual std::string name() const = 0;

  // Called once, when the Exchanger registers its layers: validates the settings against
  // the layers and the world size and allocates all per-layer state. Throws
  // gradcomm::Error (kInvalidArgument) for absurd settings.
  virtual void setup(std::span<const LayerSpec> layers, int world_size, int rank) = 0;

  // The settings that must be identical on every rank, as text; folded into the
  // agreement fingerprint (so a rank with another density fails at setup, not mid-run).
  virtual std::string settings_fingerprint() const = 0;

  // Workspace query: the most bytes per rank `wire(layer)` can ever ask for.
  virtual std::size_t max_payload_bytes(std::size_t layer) const = 0;

  // The wire for `layer` this step: a pure function of settings, step and layer, so it is
  // the same on every rank.
  virtual LayerWire wire(std::size_t layer) const = 0;

  // Compresses `grad` (numel of the layer, fp32) into `payload` (wire(layer).bytes()),
  // updating this layer's state. Must not allocate.
  virtual EncodeResult encode(std::size_t layer, TensorView grad, TensorView payload) = 0;

  // `received`: the allreduced payload (a sum over ranks), or all ranks' payloads
  // concatenated in rank order. Writes the averaged update (numel of the layer, fp32)
  // into `out`. Throws kCorruptPayload for a payload that fails validation, without
  // writing out of bounds. Every rank must produce bitwise the same `out`.
  virtual void decode(std::size_t layer, TensorView received, TensorView out) = 0;

  // The step was skipped on every rank (NonFinitePolicy::kSkipStep) after this layer was
  // encoded and decoded. `own_payload` is what encode() wrote for this rank. A compressor
  // with error feedback puts what the payload took out of its residual back in, so the
  // skipped step defers what it would have sent instead of dropping it. The default, for
  // compressors without such state, does nothing. Not on the hot path: may allocate.
  virtual void on_step_skipped(std::size_t layer, TensorView own_payload) {
    (void)layer;
    (void)own_payload;
  }

  // The stream (and device status words) of the coming step's CUDA layers; the default,
  // for compressors with host layers only, ignores it.
  virtual void set_execution(const ExecutionContext& context) { (void)context; }

  // Schedules (sparsity warm-up, re-planning) advance with these; both default to no-op.
  virtual void set_step(std::int64_t step) { (void)step; }
  virtual void set_epoch(std::int64_t epoch) { (void)epoch; }

  // Per-rank state (residuals, momenta, schedule position) as a self-describing blob,
  // and back. load_state throws kCorruptPayload on a blob of the wrong shape.
  virtual std::vector<std::byte> save_state() const = 0;
  virtual void load_state(std::span<const std::byte> blob) = 0;
};

}  // namespace gradcomm
