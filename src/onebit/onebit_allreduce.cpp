// The 1-bit compressed allreduce (docs/algorithms/onebit-adam.md) and its error state.
//
// Wire layout (docs/algorithms/onebit-adam.md): for one call over tensors t = 0..T-1
// with padded lengths N_t (multiples of 8p), every rank's block for one peer is
//   for each non-empty t: [fp32 scale][N_t / (8p) bytes of signs][pad to 4 bytes]
// The alltoall sends p such blocks (block j: chunk j of each tensor, with this rank's
// worker scale); the allgather sends one (this rank's server chunk and server scale).
// So the scales ride with the bits and a call is exactly two collectives.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "gradcomm/onebit.h"
#include "kernels/cpu/onebit_kernels.h"
#include "kernels/shared/onebit_math.h"
#if defined(GRADCOMM_HAVE_CUDA)
#include "kernels/cuda/device_buffer.cuh"
#include "kernels/cuda/onebit_kernels.cuh"
#endif

namespace gradcomm {
namespace {

constexpr std::uint32_t kStateMagic = 0x42314347u;  // "GC1B"
constexpr std::uint32_t kStateVersion = 1;

using kernels::onebit::segment_bytes;

std::size_t block_bytes(std::span<const std::size_t> numels, int p) {
  std::size_t block = 0;
  for (std::size_t n : numels) block += segment_bytes(onebit_padded_numel(n, p), p);
  return block;
}

// A scale is the RMS of finite floats, so it is finite and >= 0 unless the RMS itself
// overflowed float (+inf: values near FLT_MAX, e.g. a diverging momentum), which is a
// non-finite input, not damage; anything else is a corrupt payload. Every rank receives
// the same scales, so every rank throws the same error.
void check_received_scale(float scale, int rank, int from, const char* what, std::size_t tensor) {
  GRADCOMM_CHECK(scale != std::numeric_limits<float>::infinity(), ErrorCode::kNonFinite,
                 "compressed_allreduce on rank ", rank, ": rank ", from, " sent ", what, " inf for tensor ",
                 tensor, ": the RMS of its compensated values overflowed float (diverging momentum? "
                 "lower the learning rate)");
  GRADCOMM_CHECK(std::isfinite(scale) && scale >= 0.0f, ErrorCode::kCorruptPayload, "compressed_allreduce on rank ",
                 rank, ": rank ", from, " sent ", what, " ", scale, " for tensor ", tensor,
                 " (corrupt payload, or ranks out of step)");
}

#if !defined(GRADCOMM_HAVE_CUDA)
[[noreturn]] void no_cuda(const char* what) {
  GRADCOMM_THROW(ErrorCode::kUnsupported, what,
                 ": CUDA tensors need gradcomm built with CUDA (GRADCOMM_WITH_CUDA=ON)");
}
#endif

#if defined(GRADCOMM_HAVE_CUDA)
constexpr std::size_t kCudaScratchAlign = 256;
std::size_t align_scratch(std::size_t bytes) {
  return (bytes + kCudaScratchAlign - 1) / kCudaScratchAlign * kCudaScratchAlign;
}
std::size_t cuda_scratch_bytes() { return align_scratch(kernels::cuda::onebit_scratch_bytes()); }
// After the per-tensor scratch: the non-finite count and the bad-scale flag (one word
// each), then room for the p scales of every tensor that a phase checks.
std::size_t cuda_words_bytes(std::size_t tensors, int p) {
  return align_scratch(2 * sizeof(std::uint32_t) + tensors * static_cast<std::size_t>(p) * sizeof(float));
}
#endif

#if defined(GRADCOMM_HAVE_CUDA)
// The CUDA path: the same two collectives, the kernels on cuda_stream. It waits for the
// stream three times per call, however many tensors: before each collective (the
// communicator reads what the kernels wrote; its stream is not ours) and at the end
// (the call returns with `out` written). The non-finite count and the received scales
// come back at those points, so the scales are checked as on the CPU at no extra wait.
OneBitResult cuda_compressed_allreduce(Communicator& comm, std::span<const TensorView> xs,
                                       std::span<OneBitErrorState* const> states,
                                       std::span<const TensorView> outs, TensorView workspace,
                                       std::size_t block, void* cuda_stream) {
  namespace cuda = kernels::cuda;
  const int p = comm.size();
  const int rank = comm.rank();
  const std::size_t pz = static_cast<std::size_t>(p);
  const std::size_t tensors = xs.size();
  const std::size_t need = (2 * pz + 1) * block;
  const std::size_t scratch_at = align_scratch(need);
  const std::size_t words_at = scratch_at + tensors * cuda_scratch_bytes();
  GRADCOMM_CHECK(workspace.nbytes() >= words_at + cuda_words_bytes(tensors, p), ErrorCode::kSizeMismatch,
                 "compressed_allreduce on rank ", rank, ": workspace ", workspace.describe(),
                 " is smaller than onebit_workspace_bytes() = ", words_at + cuda_words_bytes(tensors, p));
  auto* base = static_cast<std::uint8_t*>(workspace.data());
  std::uint8_t* a2a_send = base;  // also the allgather's receive buffer
  std::uint8_t* a2a_recv = base + pz * block;
  std::uint8_t* ag_send = base + 2 * pz * block;
  auto scratch = [&](std::size_t t) { return base + scratch_at + t * cuda_scratch_bytes(); };
  auto* nonfinite = reinterpret_cast<std::uint32_t*>(base + words_at);
  std::uint32_t* bad_scale = nonfinite + 1;
  auto* scales = reinterpret_cast<float*>(bad_scale + 1);  // [tensor][rank]
  // Host copies of the words and scales: grow-only, so steady state never allocates.
  thread_local std::vector<std::byte> host;
  host.resize(std::max(host.size(), 2 * sizeof(std::uint32_t) + tensors * pz * sizeof(float)));
  auto read_back = [&](std::size_t scale_count) {
    cuda::copy_to_host_sync(host.data(), nonfinite, 2 * sizeof(std::uint32_t) + scale_count * sizeof(float),
                            cuda_stream);
  };
  auto host_scale = [&](std::size_t t, std::size_t r) {
    float scale;
    std::memcpy(&scale, host.data() + 2 * sizeof(std::uint32_t) + (t * pz + r) * sizeof(float), sizeof scale);
    return scale;
  };
  // Every rank received the same scales, so every rank throws the same error.
  auto check_scales = [&](const char* what, bool used_chunks_only) {
    std::size_t t = 0;
    for (std::size_t i = 0; i < tensors; ++i) {
      const OneBitErrorState& s = *states[i];
      if (s.padded_numel() == 0) continue;
      const std::size_t count = used_chunks_only ? (s.numel() + s.chunk_numel() - 1) / s.chunk_numel() : pz;
      for (std::size_t r = 0; r < count; ++r) {
        check_received_scale(host_scale(t, r), rank, static_cast<int>(r), what, i);
      }
      t += 1;
    }
  };

  cuda::zero_async(nonfinite, 2 * sizeof(std::uint32_t), cuda_stream);
  std::size_t offset = 0;
  for (std::size_t t = 0; t < tensors; ++t) {
    OneBitErrorState& s = *states[t];
    if (s.padded_numel() == 0) continue;
    cuda::onebit_worker_compress(static_cast<const float*>(xs[t].data()), s.numel(),
                                 static_cast<float*>(s.worker_error().data()), s.padded_numel(), p,
                                 a2a_send + offset, block, scratch(t), nonfinite, cuda_stream);
    offset += segment_bytes(s.padded_numel(), p);
  }
  read_back(0);
  OneBitResult result;
  std::uint32_t count = 0;
  std::memcpy(&count, host.data(), sizeof count);
  result.nonfinite = count;
  comm.alltoall(TensorView(a2a_send, pz * block, DType::kUInt8, Device::kCuda),
                TensorView(a2a_recv, pz * block, DType::kUInt8, Device::kCuda))
      ->wait();

  // Server side: this rank owns chunk `rank` of every tensor. A bad received scale stops
  // the kernels (the flag) before they touch that tensor's server error and the later
  // ones': where the CPU stops too.
  offset = 0;
  std::size_t checked = 0;
  for (std::size_t t = 0; t < tensors; ++t) {
    OneBitErrorState& s = *states[t];
    if (s.padded_numel() == 0) continue;
    cuda::onebit_gather_scales(a2a_recv + offset, block, pz, scales + checked * pz, bad_scale, cuda_stream);
    cuda::onebit_server_compress(a2a_recv + offset, block, p, static_cast<float*>(s.server_error().data()),
                                 s.chunk_numel(), ag_send + offset, scratch(t), bad_scale, cuda_stream);
    checked += 1;
    offset += segment_bytes(s.padded_numel(), p);
  }
  read_back(checked * pz);
  check_scales("scale", false);
  comm.allgather(TensorView(ag_send, block, DType::kUInt8, Device::kCuda),
                 TensorView(a2a_send, pz * block, DType::kUInt8, Device::kCuda))
      ->wait();

  offset = 0;
  checked = 0;
  for (std::size_t t = 0; t < tensors; ++t) {
    OneBitErrorState& s = *states[t];
    if (s.padded_numel() == 0) continue;
    // Only the chunks that hold elements are decoded, and their scales checked (as on the
    // CPU); a chunk all padding may carry any scale.
    const std::size_t used = (s.numel() + s.chunk_numel() - 1) / s.chunk_numel();
    cuda::onebit_gather_scales(a2a_send + offset, block, used, scales + checked * pz, bad_scale, cuda_stream);
    cuda::onebit_decode(a2a_send + offset, block, s.chunk_numel(), static_cast<float*>(outs[t].data()),
                        s.numel(), bad_scale, cuda_stream);
    checked += 1;
    offset += segment_bytes(s.padded_numel(), p);
  }
  read_back(checked * pz);
  check_scales("server scale", true);
  return result;
}
#endif

}  // namespace

std::size_t onebit_padded_numel(std::size_t n, int world_size) {
  GRADCOMM_CHECK_ARG(world_size >= 1, "onebit_padded_numel: world size ", world_size, " < 1");
  return kernels::onebit::padded_numel(n, world_size);
}

// ---- OneBitErrorState --------------------------------------------------------------------

OneBitErrorState::OneBitErrorState(std::size_t numel, int world_size, Device device, void* cuda_stream)
    : numel_(numel), padded_(onebit_padded_numel(numel, world_size)), world_size_(world_size),
      device_(device), stream_(cuda_stream) {
  const std::size_t floats = padded_ + chunk_numel();
  if (floats == 0) return;
  if (device == Device::kCpu) {
    data_ = new float[floats]();
    return;
  }
#if defined(GRADCOMM_HAVE_CUDA)
  data_ = static_cast<float*>(
      kernels::cuda::allocate_zeroed(floats * sizeof(float), kernels::cuda::current_device()));
#else
  no_cuda("OneBitErrorState");
#endif
}

OneBitErrorState::~OneBitErrorState() {
  if (data_ == nullptr) return;
  if (device_ == Device::kCpu) {
    delete[] data_;
  } else {
#if defined(GRADCOMM_HAVE_CUDA)
    kernels::cuda::free_device(data_);
#endif
  }
}

OneBitErrorState::OneBitErrorState(OneBitErrorState&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), numel_(other.numel_), padded_(other.padded_),
      world_size_(other.world_size_), device_(other.device_), stream_(other.stream_) {}

OneBitErrorState& OneBitErrorState::operator=(OneBitErrorState&& other) noexcept {
  if (this != &other) {
    OneBitErrorState old(std::move(*this));
    data_ = std::exchange(other.data_, nullptr);
    numel_ = other.numel_;
    padded_ = other.padded_;
    world_size_ = other.world_size_;
    device_ = other.device_;
    stream_ = other.stream_;
  }
  return *this;
}

TensorView OneBitErrorState::worker_error() const {
  return TensorView(data_, padded_, DType::kFloat32, device_);
}

TensorView OneBitErrorState::server_error() const {
  return TensorView(data_ ? data_ + padded_ : nullptr, chunk_numel(), DType::kFloat32, device_);
}

void OneBitErrorState::zero() {
  const std::size_t bytes = (padded_ + chunk_numel()) * sizeof(float);
  if (bytes == 0) return;
  if (device_ == Device::kCpu) {
    std::memset(data_, 0, bytes);
    return;
  }
#if defined(GRADCOMM_HAVE_CUDA)
  // On the state's stream (ordered with the allreduce's kernels there), and complete on
  // return like the CPU's memset.
  kernels::cuda::zero_async(data_, bytes, stream_);
  kernels::cuda::synchronize(stream_);
#endif
}

std::vector<std::byte> OneBitErrorState::save() const {
  const std::uint64_t header[4] = {kStateMagic | (std::uint64_t{kStateVersion} << 32), numel_,
                                   static_cast<std::uint64_t>(world_size_), padded_};
  const std::size_t data_bytes = (padded_ + chunk_numel()) * sizeof(float);
  std::vector<std::byte> blob(sizeof header + data_bytes);
  std::memcpy(blob.data(), header, sizeof header);
  if (data_bytes == 0) return blob;
  if (device_ == Device::kCpu) {
    std::memcpy(blob.data() + sizeof header, data_, data_bytes);
  } else {
#if defined(GRADCOMM_HAVE_CUDA)
    kernels::cuda::copy_to_host_sync(blob.data() + sizeof header, data_, data_bytes, stream_);
#endif
  }
  return blob;
}

void OneBitErrorState::load(std::span<const std::byte> blob) {
  std::uint64_t header[4] = {};
  GRADCOMM_CHECK(blob.size() >= sizeof header, ErrorCode::kCorruptPayload,
                 "OneBitErrorState::load: blob of ", blob.size(), " bytes is shorter than the ",
                 sizeof header, "-byte header");
  std::memcpy(header, blob.data(), sizeof header);
  GRADCOMM_CHECK(header[0] == (kStateMagic | (std::uint64_t{kStateVersion} << 32)),
                 ErrorCode::kCorruptPayload,
                 "OneBitErrorState::load: not a 1-bit error state (bad magic or version)");
  const std::size_t data_bytes = (padded_ + chunk_numel()) * sizeof(float);
  GRADCOMM_CHECK(header[1] == numel_ && header[2] == static_cast<std::uint64_t>(world_size_) &&
                     header[3] == padded_ && blob.size() == sizeof header + data_bytes,
                 ErrorCode::kCorruptPayload, "OneBitErrorState::load: blob holds numel ", header[1],
                 " for world size ", header[2], " (", blob.size(), " bytes); this state has numel ",
                 numel_, " for world size ", world_size_, " (", sizeof header + data_bytes,
                 " bytes)");
  if (data_bytes == 0) return;
  if (device_ == Device::kCpu) {
    std::memcpy(data_, blob.data() + sizeof header, data_bytes);
  } else {
#if defined(GRADCOMM_HAVE_CUDA)
    kernels::cuda::copy_to_device_sync(data_, blob.data() + sizeof header, data_bytes, stream_);
#endif
  }
}

// ---- sizes -------------------------------------------------------------------------------

std::size_t onebit_workspace_bytes(std::span<const std::size_t> numels, int world_size,
                                   Device device) {
  GRADCOMM_CHECK_ARG(world_size >= 1, "onebit_workspace_bytes: world size ", world_size, " < 1");
  const std::size_t block = block_bytes(numels, world_size);
  // alltoall send (p blocks; reused as the allgather's receive), alltoall receive
  // (p blocks), allgather send (1 block).
  std::size_t bytes = (2 * static_cast<std::size_t>(world_size) + 1) * block;
  if (device == Device::kCuda) {
#if defined(GRADCOMM_HAVE_CUDA)
    bytes = align_scratch(bytes) + numels.size() * cuda_scratch_bytes() +
            cuda_words_bytes(numels.size(), world_size);
#else
    no_cuda("onebit_workspace_bytes");
#endif
  }
  return bytes;
}

std::size_t onebit_workspace_bytes(std::size_t numel, int world_size, Device device) {
  return onebit_workspace_bytes(std::span<const std::size_t>(&numel, 1), world_size, device);
}

std::uint64_t onebit_wire_bytes(std::span<const std::size_t> numels, int world_size) {
  const std::uint64_t block = block_bytes(numels, world_size);
  return alltoall_wire_bytes(block * static_cast<std::uint64_t>(world_size), world_size) +
         allgather_wire_bytes(block, world_size);
}

// ---- the allreduce -----------------------------------------------------------------------

OneBitResult compressed_allreduce(Communicator& comm, TensorView x, OneBitErrorState& state,
                                  TensorView out, TensorView workspace, void* cuda_stream) {
  OneBitErrorState* states[1] = {&state};
  return compressed_allreduce(comm, std::span<const TensorView>(&x, 1), states,
                              std::span<const TensorView>(&out, 1), workspace, cuda_stream);
}

OneBitResult compressed_allreduce(Communicator& comm, std::span<const TensorView> xs,
                                  std::span<OneBitErrorState* const> states,
                                  std::span<const TensorView> outs, TensorView workspace,
                                  void* cuda_stream) {
  (void)cuda_stream;  // used only by the CUDA path
  const int p = comm.size();
  const int rank = comm.rank();
  const std::size_t pz = static_cast<std::size_t>(p);
  const Device device = comm.device();
  GRADCOMM_CHECK(xs.size() == states.size() && xs.size() == outs.size(), ErrorCode::kSizeMismatch,
                 "compressed_allreduce on rank ", rank, ": ", xs.size(), " inputs, ", states.size(),
                 " error states and ", outs.size(), " outputs");
  std::size_t block = 0;
  for (std::size_t t = 0; t < xs.size(); ++t) {
    const OneBitErrorState* s = states[t];
    GRADCOMM_CHECK(s != nullptr, ErrorCode::kInvalidArgument, "compressed_allreduce on rank ",
                   rank, ": tensor ", t, " has no error state");
    GRADCOMM_CHECK(xs[t].dtype() == DType::kFloat32 && outs[t].dtype() == DType::kFloat32 &&
                       xs[t].numel() == s->numel() && outs[t].numel() == s->numel() &&
                       s->world_size() == p,
                   ErrorCode::kSizeMismatch, "compressed_allreduce on rank ", rank, " of ", p,
                   ": tensor ", t, " is ", xs[t].describe(), " -> ", outs[t].describe(),
                   " but its error state is for float32[", s->numel(), "] over ", s->world_size(),
                   " ranks");
    GRADCOMM_CHECK((xs[t].device() == device || xs[t].empty()) &&
                       (outs[t].device() == device || outs[t].empty()) && s->device() == device,
                   ErrorCode::kInvalidArgument, "compressed_allreduce on rank ", rank, ": tensor ",
                   t, " (", xs[t].describe(), ", error state on ", device_name(s->device()),
                   ") is not on ", comm.describe(), "'s device ", device_name(device));
    block += segment_bytes(s->padded_numel(), p);
  }
  const std::size_t need = (2 * pz + 1) * block;
  GRADCOMM_CHECK(workspace.dtype() == DType::kUInt8 && (workspace.device() == device || need == 0),
                 ErrorCode::kInvalidArgument, "compressed_allreduce on rank ", rank,
                 ": workspace must be uint8 on ", device_name(device), ", got ",
                 workspace.describe());
  OneBitResult result;
  if (block == 0) return result;  // every tensor is empty on every rank: nothing to send

  auto* base = static_cast<std::uint8_t*>(workspace.data());
  std::uint8_t* a2a_send = base;  // also the allgather's receive buffer
  std::uint8_t* a2a_recv = base + pz * block;
  std::uint8_t* ag_send = base + 2 * pz * block;

  if (device == Device::kCuda) {
#if defined(GRADCOMM_HAVE_CUDA)
    return cuda_compressed_allreduce(comm, xs, states, outs, workspace, block, cuda_stream);
#else
    no_cuda("compressed_allreduce");
#endif
  }

  GRADCOMM_CHECK(workspace.nbytes() >= need, ErrorCode::kSizeMismatch, "compressed_allreduce on rank ",
                 rank, ": workspace ", workspace.describe(), " is smaller than ", need,
                 " bytes (onebit_workspace_bytes)");
  // Worker side: pass 1 finds the scale of x + e_w, pass 2 writes signs and the new e_w,
  // chunk by chunk straight into the peers' blocks.
  std::size_t offset = 0;
  for (std::size_t t = 0; t < xs.size(); ++t) {
    OneBitErrorState& s = *states[t];
    if (s.padded_numel() == 0) continue;
    const float* x = static_cast<const float*>(xs[t].data());
    float* ew = static_cast<float*>(s.worker_error().data());
    const kernels::SumSq norm = kernels::onebit_compensated_sumsq(x, s.numel(), ew, s.padded_numel());
    result.nonfinite += norm.nonfinite;
    const float scale = kernels::onebit_scale(norm.sumsq, s.padded_numel());
    const std::size_t chunk = s.chunk_numel();
    for (std::size_t j = 0; j < pz; ++j) {
      std::uint8_t* segment = a2a_send + j * block + offset;
      std::memcpy(segment, &scale, sizeof scale);
      const std::size_t begin = j * chunk;
      const std::size_t valid = s.numel() > begin ? std::min(chunk, s.numel() - begin) : 0;
      kernels::onebit_pack_with_error(valid ? x + begin : nullptr, valid, ew + begin, chunk, scale,
                                      segment + sizeof(float));
    }
    offset += segment_bytes(s.padded_numel(), p);
  }
  comm.alltoall(TensorView(a2a_send, pz * block, DType::kUInt8),
                TensorView(a2a_recv, pz * block, DType::kUInt8))
      ->wait();

  // Server side: this rank owns chunk `rank` of every tensor.
  offset = 0;
  for (std::size_t t = 0; t < xs.size(); ++t) {
    OneBitErrorState& s = *states[t];
    if (s.padded_numel() == 0) continue;
    for (std::size_t r = 0; r < pz; ++r) {
      float scale;
      std::memcpy(&scale, a2a_recv + r * block + offset, sizeof scale);
      check_received_scale(scale, rank, r, "scale", t);
    }
    float* es = static_cast<float*>(s.server_error().data());
    const std::size_t chunk = s.chunk_numel();
    const double sumsq = kernels::onebit_server_accumulate(a2a_recv + offset, block, p, es, chunk);
    const float scale = kernels::onebit_scale(sumsq, chunk);
    std::memcpy(ag_send + offset, &scale, sizeof scale);
    kernels::onebit_pack_with_error(nullptr, 0, es, chunk, scale, ag_send + offset + sizeof(float));
    offset += segment_bytes(s.padded_numel(), p);
  }
  comm.allgather(TensorView(ag_send, block, DType::kUInt8),
                 TensorView(a2a_send, pz * block, DType::kUInt8))
      ->wait();

  offset = 0;
  for (std::size_t t = 0; t < xs.size(); ++t) {
    OneBitErrorState& s = *states[t];
    if (s.padded_numel() == 0) continue;
    float* o = static_cast<float*>(outs[t].data());
    const std::size_t chunk = s.chunk_numel();
    for (std::size_t j = 0; j < pz && j * chunk < s.numel(); ++j) {
      const std::uint8_t* segment = a2a_send + j * block + offset;
      float scale;
      std::memcpy(&scale, segment, sizeof scale);
      check_received_scale(scale, rank, static_cast<int>(j), "server scale", t);
      kernels::onebit_unpack(segment + sizeof(float), scale, o + j * chunk,
                             std::min(chunk, s.numel() - j * chunk));
    }
    offset += segment_bytes(s.padded_numel(), p);
  }
  return result;
}

}  // namespace gradcomm
