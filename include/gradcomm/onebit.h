// 1-bit Adam (Tang et al., ICML 2021): the error-compensated 1-bit compressed allreduce
// and the OneBitAdam optimizer built on it. See docs/algorithms/onebit-adam.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "gradcomm/communicator.h"
#include "gradcomm/tensor.h"

namespace gradcomm {

// n rounded up to a multiple of 8 * world_size: every rank's server chunk (N/p elements)
// is then a whole number of bytes of packed signs.
std::size_t onebit_padded_numel(std::size_t n, int world_size);

// The per-rank error-feedback state of one tensor: the worker error e_w (N floats, the
// padded length) and the server error e_s (N/p floats, this rank's chunk). Each rank has
// its own values; save()/load() keep them exactly, so a restart loses nothing.
// Storage lives on `device` (the same device as the tensors passed to the allreduce). On
// a CUDA device, construction, zero(), save() and load() run on `cuda_stream` (a
// cudaStream_t: pass the stream compressed_allreduce runs on, so they are ordered with
// it; nullptr: the legacy default stream) and are complete when they return.
class OneBitErrorState {
 public:
  OneBitErrorState() = default;
  OneBitErrorState(std::size_t numel, int world_size, Device device = Device::kCpu,
                   void* cuda_stream = nullptr);
  ~OneBitErrorState();
  OneBitErrorState(OneBitErrorState&& other) noexcept;
  OneBitErrorState& operator=(OneBitErrorState&& other) noexcept;
  OneBitErrorState(const OneBitErrorState&) = delete;
  OneBitErrorState& operator=(const OneBitErrorState&) = delete;

  std::size_t numel() const noexcept { return numel_; }
  std::size_t padded_numel() const noexcept { return padded_; }
  std::size_t chunk_numel() const noexcept { return world_size_ ? padded_ / world_size_ : 0; }
  int world_size() const noexcept { return world_size_; }
  Device device() const noexcept { return device_; }

  TensorView worker_error() const;  // float32[padded_numel()]
  TensorView server_error() const;  // float32[chunk_numel()]

  void set_stream(void* cuda_stream) noexcept { stream_ = cuda_stream; }
  void zero();
  // "GC1B", version, numel, world size, then e_w and e_s as float32 (host byte order).
  std::vector<std::byte> save() const;
  // Throws kCorruptPayload for a blob that is not a state of this numel and world size.
  void load(std::span<const std::byte> blob);

 private:
  float* data_ = nullptr;  // e_w then e_s, padded_ + padded_ / world_size_ floats
  std::size_t numel_ = 0;
  std::size_t padded_ = 0;
  int world_size_ = 0;
  Device device_ = Device::kCpu;
  void* stream_ = nullptr;  // CUDA: where zero, save and load run
};

// Bytes of workspace compressed_allreduce needs for these tensor lengths (uint8, on the
// tensors' device). Query once at setup; the call itself never allocates.
std::size_t onebit_workspace_bytes(std::span<const std::size_t> numels, int world_size,
                                   Device device = Device::kCpu);
std::size_t onebit_workspace_bytes(std::size_t numel, int world_size,
                                   Device device = Device::kCpu);

// Bytes one rank sends per compressed_allreduce of these lengths (alltoall + allgather),
// by the same model as Communicator::traffic(): 2 (p-1) B, with B the per-rank block.
std::uint64_t onebit_wire_bytes(std::span<const std::size_t> numels, int world_size);

struct OneBitResult {
  std::size_t nonfinite = 0;  // non-finite input elements on this rank (sent as 0)
};

// out = the average over ranks of x, through 1-bit signs with worker and server error
// feedback (docs/algorithms/onebit-adam.md). Exactly two collectives on `comm`: an alltoall of
// each rank's packed chunks (each headed by its fp32 scale), then an allgather of the
// server-compressed chunks. Every rank ends with bitwise the same `out`. `out` may alias
// `x`. Tensors are float32 on comm.device(); for CUDA tensors the kernels run on
// `cuda_stream` (a cudaStream_t; nullptr: the default stream) and the call returns when
// `out` is written. All ranks must pass the same lengths in the same order. The CUDA
// path waits for the stream three times per call, whatever the number of tensors: before
// the alltoall, before the allgather (the communicator reads what the kernels wrote) and
// at the end. The scales received are checked as on the CPU (a bad one throws on every
// rank alike); the kernels after a bad scale leave the server errors and `out` alone.
OneBitResult compressed_allreduce(Communicator& comm, TensorView x, OneBitErrorState& state,
                                  TensorView out, TensorView workspace,
                                  void* cuda_stream = nullptr);

// The fused multi-tensor form: every tensor keeps its own scales and errors, but all are
// packed into one buffer, so the whole list costs one alltoall and one allgather.
OneBitResult compressed_allreduce(Communicator& comm, std::span<const TensorView> xs,
                                  std::span<OneBitErrorState* const> states,
                                  std::span<const TensorView> outs, TensorView workspace,
                                  void* cuda_stream = nullptr);

// ---- OneBitAdam ------------------------------------------------------------------------

struct OneBitAdamOptions {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;  // decoupled: p -= lr * (update + wd * p)
  // Steps of plain Adam on densely allreduced gradients before the variance is frozen
  // and momentum is exchanged through the 1-bit allreduce (15-25% of training).
  std::int64_t freeze_step = 100000;
  // Off reproduces the reference (DeepSpeed OnebitAdam) update; on divides m by
  // 1 - beta1^t and v by 1 - beta2^t (t frozen at freeze_step for v).
  bool bias_correction = false;
  // Compress m / (sqrt(v) + eps) instead of m, and multiply back. Exact without
  // compression (v is frozen and identical on all ranks) and robust where the reference
  // diverges (tiny frozen v_i blow up the tensor-wide sign scale; docs/algorithms/onebit-adam.md,
  // "Why `precondition`").
  bool precondition = false;
  // The dense exchanges (warm-up gradients; uncompressed params after the freeze) run
  // through an Exchanger fusing them into allreduces of up to this many bytes.
  std::size_t bucket_bytes = 4u << 20;
};

// Throws kInvalidArgument, naming the option and its value, unless OneBitAdam can train
// with `options` (the constructor checks the same): lets a caller that builds the optimizer
// later (gradcomm.torch.OneBitAdam, at its first step) refuse bad options at once.
void check_options(const OneBitAdamOptions& options);

// One parameter tensor the optimizer updates in place (host memory). float32, or float16 or
// bfloat16: then the optimizer keeps a float32 master copy, applies every update to it and
// writes the parameter from it rounded to nearest even, and takes gradients (and writes
// momenta) in the parameter's dtype; m, v and the 1-bit errors are float32 either way.
struct OneBitParam {
  std::string name;
  TensorView value;
  // false: an uncompressed group. Its gradient is densely allreduced every step and it
  // runs plain Adam throughout (its variance keeps updating), as DeepSpeed's non_freeze.
  bool compressed = true;
  // Optional, numel() entries of 0 or 1: momentum coordinates multiplied by 0 after each
  // compressed exchange (a sign cannot represent an always-zero coordinate).
  std::vector<float> mask;
};

class OneBitAdam {
 public:
  // Validates the options and allocates all state and workspace. Every rank must pass
  // the same parameter lengths in the same order.
  OneBitAdam(Communicator& comm, std::vector<OneBitParam> params, OneBitAdamOptions options = {});
  ~OneBitAdam();
  OneBitAdam(const OneBitAdam&) = delete;
  OneBitAdam& operator=(const OneBitAdam&) = delete;

  // One optimizer step from this rank's local (not averaged) gradients, one per param in
  // registration order. Warm-up: the gradients averaged by an Exchanger (dense, fused
  // allreduces of up to bucket_bytes). Compression stage: the same for the uncompressed
  // params (if any) and one fused 1-bit allreduce of all compressed momenta; no gradient
  // allreduce for compressed params. step() is exactly the three calls below.
  void step(std::span<const TensorView> grads);

  // The same step in parts, for callers whose dense exchange runs elsewhere (a DDP hook
  // averages the gradients; gradcomm.torch.OneBitAdam uses these):
  // - warm-up: warmup_update() with every param's gradient averaged over the ranks;
  // - after the freeze: exchange_momentum() with the compressed params' local gradients
  //   (in registration order) runs the 1-bit allreduce of the momenta and writes the
  //   averaged momenta into `momenta_out` (one per compressed param; may be empty), then
  //   frozen_update() with the uncompressed params' averaged gradients applies the update.
  void warmup_update(std::span<const TensorView> averaged);
  OneBitResult exchange_momentum(std::span<const TensorView> local_grads,
                                 std::span<const TensorView> momenta_out);
  void frozen_update(std::span<const TensorView> uncompressed_averaged);

  std::int64_t steps_done() const noexcept { return step_; }
  bool frozen() const noexcept { return step_ >= options_.freeze_step; }
  const OneBitAdamOptions& options() const noexcept { return options_; }
  void set_lr(float lr);
  std::size_t num_params() const noexcept;
  std::span<const float> momentum(std::size_t param) const;
  std::span<const float> variance(std::size_t param) const;
  const OneBitErrorState& error_state(std::size_t param) const;  // compressed params only
  std::size_t last_nonfinite() const noexcept { return last_nonfinite_; }

  // This rank's optimizer state: step, m, v, and its own worker and server errors.
  std::vector<std::byte> save_state() const;
  // Throws kCorruptPayload on a blob from other shapes, settings or a world size.
  void load_state(std::span<const std::byte> blob);

 private:
  struct Corrections {
    float m = 1.0f, sqrt_v_frozen = 1.0f, sqrt_v_live = 1.0f;
  };
  Corrections corrections() const;
  void adam_update(std::size_t param, const float* averaged_grad, bool update_v, float sqrt_bc2);
  void check_gradients(const char* call, std::span<const TensorView> grads, bool compressed_only) const;

  struct Impl;
  Communicator& comm_;
  OneBitAdamOptions options_;
  std::int64_t step_ = 0;
  std::size_t last_nonfinite_ = 0;
  std::unique_ptr<Impl> impl_;
};

}  // namespace gradcomm
