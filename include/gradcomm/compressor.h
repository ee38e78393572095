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
  // Payloads are sparse slot lists (docs/wire-format.md, "Sparse slot list"): the sparse
  // allreduce sums them by index across ranks and delivers the largest sums of each region
  // (docs/algorithms/sparse-allreduce.md); the compressor takes them in decode_selection().
  kSparseAllreduce,
  // Only in the StepEngine's CollectiveRequest, for the phases of a sparse allreduce.
  kAllgatherv,
  kAlltoall,
  kAlltoallv,
};
const char* collective_name(Collective collective) noexcept;

// How a layer that can go sparse crosses the ranks (a plan from the cost model, or the
// user's choice; docs/algorithms/sparse-allreduce.md, "Choosing").
enum class SparseExchange : std::uint8_t {
  kAllgather,      // every rank receives every rank's k entries: (p - 1) k
  kReduceScatter,  // the sparse allreduce: about 2k whatever p
  kDense,          // a dense allreduce of the whole layer
};
const char* sparse_exchange_name(SparseExchange exchange) noexcept;
// "allgather", "reduce_scatter" or "dense"; throws kInvalidArgument otherwise.
SparseExchange parse_sparse_exchange(const std::string& name);

// What one layer puts on the wire in the current step.
struct LayerWire {
  Collective collective = Collective::kAllreduce;
  DType dtype = DType::kFloat32;  // allreduce: kFloat32 or kFloat16; otherwise kUInt8
  std::size_t count = 0;          // elements per rank
  // kSparseAllreduce: the slots of the slot list (k) and the dtype of its values
  // (kFloat32 or kFloat16); `count` is the list's bytes.
  std::size_t slots = 0;
  DType value_dtype = DType::kFloat32;

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

  // kSparseAllreduce layers: the exchange kept the entries `indices` (uint32, ascending)
  // with `sums` (float32: the sum over ranks of their entries there); `own_payload` is the
  // slot list encode() wrote. Writes the averaged update into `out` and gives back to this
  // rank's error feedback what it sent that was not kept. Every rank gets the same
  // indices and sums. The default throws kUnsupported.
  virtual void decode_selection(std::size_t layer, TensorView own_payload, TensorView indices,
                                TensorView sums, TensorView out);

  // Asks `layer` to cross the ranks as `exchange` from the next step on (a setting, like a
  // density; the same on every rank). Returns false when the compressor has no such
  // choice for the layer (dense compressors, layers that always stay dense). The default
  // returns false.
  virtual bool set_layer_exchange(std::size_t layer, SparseExchange exchange) {
    (void)layer;
    (void)exchange;
    return false;
  }

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
