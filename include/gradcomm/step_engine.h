// StepEngine: one step of a gradient exchange, without a communicator.
//
// Given the layers and a compressor, the engine lays out a step (summable payloads of one
// dtype fused into allreduce groups, opaque payloads into allgather blocks, each group up
// to bucket_bytes, its layers need not be neighbours), encodes each layer into flat buffers as it is submitted, says which collective
// is ready to start next (in the order every rank agrees on), decodes what the collectives
// delivered, applies the non-finite policy (giving a skipped step's payloads back to the
// compressor) and reports the step's stats. It never communicates: the driver moves the
// bytes. `Exchanger` drives it with a `Communicator`; the PyTorch hooks drive it with
// torch.distributed through the same Exchanger (see docs/cpp-api.md, "Architecture").
//
// The framing it writes is the one wire format of gradcomm (docs/wire-format.md,
// "Exchange framing"): every driver sends exactly these bytes.
//
// Layers may all live on the CPU or all on one CUDA device (LayerSpec::device). On a
// device, the engine's buffers are device memory (grown only when a step needs more), every kernel and copy of
// a step is enqueued on the stream of set_stream() (the compressors' too, through
// Compressor::set_execution), nothing is allocated, and the host waits for the stream once
// per step, in finish_step(), to read the status words for the non-finite policy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "gradcomm/compressor.h"
#include "gradcomm/exchange_plan.h"
#include "gradcomm/layer.h"
#include "gradcomm/tensor.h"

namespace gradcomm {

enum class NonFinitePolicy : std::uint8_t {
  kError,     // throw gradcomm::Error (kNonFinite) on every rank, naming layer and ranks
  kSkipStep,  // every rank gets a zero update for the whole step
  kZero,      // non-finite elements count as 0; the step goes on
};
const char* nonfinite_policy_name(NonFinitePolicy policy) noexcept;
NonFinitePolicy parse_nonfinite_policy(const std::string& name);

struct StepEngineOptions {
  std::size_t bucket_bytes = 4u << 20;  // fuse summable payloads up to this size
  NonFinitePolicy nonfinite = NonFinitePolicy::kError;
  // The Exchanger agrees every step, before the step's first collective, that every rank
  // is at the same step and laid it out alike (an allgather of 4 words per rank, started
  // at begin_step, so it overlaps the encode of the first layers). A schedule that moved
  // on some ranks only (set_epoch, a state restored on one rank) then fails on every rank,
  // naming every rank's step and the ranks laid out unlike rank 0, instead of framing
  // collectives of other sizes. The PyTorch hooks turn it on.
  bool agree_every_step = false;
  // Layers through the sparse allreduce (Collective::kSparseAllreduce): their regions are
  // rebalanced on the step's entries every this many steps (and whenever they do not fit
  // the layer's size and k); 0: only then. One small allreduce per group each time.
  std::int64_t region_refresh_steps = 50;
  // Used by the Exchanger (the engine only folds them into its fingerprint): how layers that
  // can go sparse cross the ranks, and whether over one flat world or hierarchically
  // (docs/algorithms/sparse-allreduce.md, "Choosing"). kCompressor with kFlat: as the
  // compressor is set, no plan, nothing measured.
  ExchangeChoice exchange = ExchangeChoice::kCompressor;
  Hierarchy hierarchy = Hierarchy::kFlat;
  // Rank 0 prints the plan and its predicted times (stderr) once, at setup.
  bool verbose = false;
};

struct StepStats {
  std::uint64_t wire_bytes = 0;     // bytes this rank sent in the step (algorithm model)
  // Of those, bytes sent inside its host (a hierarchical exchange's local reduce-scatter
  // and allgather); the rest crossed to other hosts.
  std::uint64_t local_wire_bytes = 0;
  std::uint64_t payload_bytes = 0;  // bytes of payload this rank produced
  std::uint64_t collectives = 0;
  std::size_t nonfinite = 0;  // layers in which some rank saw a non-finite value this step
  bool skipped = false;       // the step was skipped (NonFinitePolicy::kSkipStep)
};

// One collective of a step, for the driver to run on every rank in the same order.
struct CollectiveRequest {
  std::size_t id = 0;  // 0, 1, ... within the step; hand it back to complete()
  Collective collective = Collective::kAllreduce;
  // kAllreduce: sum `send` (float32 or float16; uint32 for the sparse allreduce's
  //   histogram) into `recv` (the same numel and dtype; the same memory unless the policy
  //   keeps this rank's payloads for a skipped step).
  // kAllgather: every rank's `send` bytes, concatenated in rank order, into `recv`
  //   (world_size x send.numel() bytes).
  // The phases of a sparse allreduce group (docs/wire-format.md, "Sparse allreduce group"):
  // kAlltoall: part r of `send` to rank r, rank r's part for this rank into part r of `recv`.
  // kAlltoallv: likewise with `send_counts` / `recv_counts` elements per rank.
  // kAllgatherv: every rank's `send`, recv_counts[r] elements from rank r, into `recv`.
  TensorView send;
  TensorView recv;
  std::span<const std::size_t> send_counts, recv_counts;  // valid until complete(id)
};

class StepEngine {
 public:
  // Validates the options, sets the compressor up for `layers` (forward order; a step
  // submits them in reverse) and reserves the send buffers from the compressor's bounds;
  // the receive buffers grow to what steps use, so steady-state steps never allocate.
  StepEngine(std::shared_ptr<Compressor> compressor, std::vector<LayerSpec> layers,
             int world_size, int rank, StepEngineOptions options = {});
  ~StepEngine();
  StepEngine(const StepEngine&) = delete;
  StepEngine& operator=(const StepEngine&) = delete;

  // The text every rank must pass to the setup agreement: the compressor's settings and
  // the engine's options (a rank with another bucket size would frame other collectives).
  std::string settings_fingerprint() const;

  // Layers on a CUDA device: the stream (a cudaStream_t) every kernel and copy of the
  // following steps is enqueued on (nullptr, the default: the legacy default stream).
  // Between steps only. Host layers ignore it.
  void set_stream(void* cuda_stream);

  // Starts step `step` (schedules follow it): lays out this step's collectives.
  void begin_step(std::int64_t step);
  // Encodes `layer` from `grad` into its slot. `out` receives the averaged update when the
  // step finishes and may alias `grad`; both stay valid until finish_step() returns. The
  // gradient and the update may be float32, float16 or bfloat16 (the layer's dtype);
  // compressors see float32.
  void submit(std::size_t layer, TensorView grad, TensorView out);
  // The same, with `nonfinite_elsewhere` non-finite elements found before this gradient
  // was formed added to the layer's count (a hierarchical exchange passes its host's: the
  // sum it submits had its non-finite inputs zeroed), so the policy sees them.
  void submit(std::size_t layer, TensorView grad, TensorView out, std::size_t nonfinite_elsewhere);
  // Throws gradcomm::Error (kInvalidArgument) naming the first layer not submitted in
  // this step: a driver checks before it waits for collectives that cannot start.
  void check_all_submitted() const;
  // The next collective whose layers are all encoded, in the agreed order, once each. A
  // sparse allreduce group runs several collectives in a row: its next one is ready only
  // once the one before has completed (complete(id)), so a driver keeps calling
  // next_ready() after each complete().
  std::optional<CollectiveRequest> next_ready();
  // Whether the next collective is a sparse allreduce phase waiting for the one before it
  // to complete: a driver that completes that one early lets the group go on.
  bool waiting_for_phase() const noexcept;
  // Collective `id` has completed on this rank: decodes its layers into their outputs (a
  // sparse allreduce group: once its last collective completed). Any order.
  void complete(std::size_t id);
  // The regions of the sparse allreduce layers (identical on every rank), for checkpoints:
  // a step resumed after load_sparse_regions() uses the regions of the run that saved.
  std::vector<std::byte> save_sparse_regions() const;
  void load_sparse_regions(std::span<const std::byte> blob);
  // After every collective completed: applies the non-finite policy and returns the stats.
  // Throws gradcomm::Error (kNonFinite) under NonFinitePolicy::kError, on every rank alike.
  const StepStats& finish_step();
  // Abandons a step that failed half-way (a collective threw): the next begin_step()
  // starts clean. Compressor state may hold a partly encoded step.
  void abandon_step() noexcept;

  bool in_step() const noexcept;
  // A hash of this step's number and layout (every layer's wire), set by begin_step():
  // ranks that would frame the same collectives have the same one.
  std::uint64_t layout_fingerprint() const noexcept;
  // Where the layers (and so the engine's buffers and the collectives' buffers) live.
  Device device() const noexcept;
  int device_index() const noexcept;
  void* stream() const noexcept;
  std::int64_t step() const noexcept;
  std::size_t collectives_this_step() const noexcept;
  std::span<const LayerSpec> layers() const noexcept { return layers_; }
  int world_size() const noexcept { return world_size_; }
  int rank() const noexcept { return rank_; }
  const StepEngineOptions& options() const noexcept { return options_; }
  Compressor& compressor() noexcept { return *compressor_; }
  // Shared: the Python bindings keep a handle to the compressor next to the engine.
  const std::shared_ptr<Compressor>& compressor_ptr() const noexcept { return compressor_; }
  const Compressor& compressor() const noexcept { return *compressor_; }

 private:
  // Decodes `layer`'s received payload into its output (through float32 for 16-bit layers).
  void decode_layer(std::size_t layer, TensorView received);
  // The same for a layer of a sparse allreduce group (`group`: its number in the step)
  // whose selection has arrived.
  void decode_selected_layer(std::size_t layer, std::size_t group);
  // Sparse allreduce groups: the request of a slot, and what a completed one does.
  CollectiveRequest sparse_request(std::size_t id);
  void complete_sparse(std::size_t id);
  // The float32 output decode writes for `layer` (its own, or the widening buffer), and the
  // narrowing of the latter into the layer's 16-bit output.
  TensorView decode_target(std::size_t layer);
  void finish_decode(std::size_t layer);
  // Adds a group's non-finite findings from its status words (host-readable memory).
  void count_allreduce_status(std::size_t group, const std::byte* status);
  void count_allgather_headers(std::size_t group, const std::byte* headers, std::size_t pitch);

  struct Impl;
  std::shared_ptr<Compressor> compressor_;
  std::vector<LayerSpec> layers_;
  int world_size_;
  int rank_;
  StepEngineOptions options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace gradcomm
