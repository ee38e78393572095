// ThreadCommunicator on one CUDA device: each rank has a stream; a collective is
// device-to-device copies (and the rank-order reduction kernel) queued when the last
// rank arrives, ordered by events:
//   ready[r]   recorded on r's stream when r calls the collective (its inputs are queued);
//   every stream waits for every ready event before the first copy (begin);
//   handoff[r] recorded on r's stream where another rank's writes must follow r's (the
//              reduction into rank 0's buffer, before the others copy it), and at the end;
//   done[r]    recorded on r's stream after it waited for every rank's handoff (end):
//              nobody reads r's buffers any more and r's are written.
// Events are created once per slot object and reused when the slot is recycled.
#include <algorithm>
#include <vector>

#include "comm/cuda_call.h"
#include "comm/reduce_element.h"
#include "comm/thread/group.h"

namespace gradcomm::thread_comm {
namespace {

template <typename T, typename Combine>
__global__ void combine_kernel(T* acc, const T* src, std::size_t n, ReduceOp op, Combine combine) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    acc[i] = combine(acc[i], src[i], op);
  }
}

struct CombineFloat {
  __device__ float operator()(float a, float b, ReduceOp op) const {
    return detail::combine_float(a, b, op);
  }
};
struct CombineHalf {
  __device__ std::uint16_t operator()(std::uint16_t a, std::uint16_t b, ReduceOp op) const {
    return detail::combine_half(a, b, op);
  }
};
struct CombineBfloat16 {
  __device__ std::uint16_t operator()(std::uint16_t a, std::uint16_t b, ReduceOp op) const {
    return detail::combine_bfloat16(a, b, op);
  }
};
template <typename T, typename Unsigned>
struct CombineInteger {
  __device__ T operator()(T a, T b, ReduceOp op) const {
    return detail::combine_integer<T, Unsigned>(a, b, op);
  }
};

template <typename T, typename Combine>
void launch(void* acc, const void* src, std::size_t n, ReduceOp op, cudaStream_t stream,
            Combine combine) {
  constexpr unsigned kThreads = 256;
  const std::size_t blocks = std::min<std::size_t>((n + kThreads - 1) / kThreads, 65535);
  combine_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<T*>(acc), static_cast<const T*>(src), n, op, combine);
}

using detail::DeviceGuard;

class CudaMover final : public Mover {
 public:
  CudaMover(int size, int device, std::span<void* const> streams) : size_(size), device_(device) {
    if (device_ < 0)
      GRADCOMM_CUDA_CALL(cudaGetDevice(&device_), "ThreadCommunicator: cudaGetDevice");
    const DeviceGuard guard(device_);
    try {
      for (int r = 0; r < size_; ++r) {
        cudaStream_t stream = nullptr;
        if (streams.empty()) {
          GRADCOMM_CUDA_CALL(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
                             "ThreadCommunicator: cudaStreamCreate for rank ", r);
          owned_.push_back(stream);
        } else {
          stream = static_cast<cudaStream_t>(streams[static_cast<std::size_t>(r)]);
        }
        streams_.push_back(stream);
      }
    } catch (...) {
      destroy_streams();
      throw;
    }
  }
  ~CudaMover() override {
    try {
      const DeviceGuard guard(device_);
      destroy_streams();
    } catch (...) {  // the device is gone: nothing of ours is left on it
    }
  }

  void* stream(int rank) const override { return streams_[static_cast<std::size_t>(rank)]; }
  int cuda_device() const override { return device_; }

  void prepare(Slot& slot) override {
    if (!slot.device_events.empty()) return;
    const DeviceGuard guard(device_);
    for (int i = 0; i < 3 * size_; ++i) {
      cudaEvent_t event = nullptr;
      GRADCOMM_CUDA_CALL(cudaEventCreateWithFlags(&event, cudaEventDisableTiming),
                         "ThreadCommunicator: cudaEventCreate");
      slot.device_events.push_back(event);
    }
  }
  void forget(Slot& slot) noexcept override {
    try {
      const DeviceGuard guard(device_);
      for (void* event : slot.device_events) cudaEventDestroy(static_cast<cudaEvent_t>(event));
    } catch (...) {
    }
    slot.device_events.clear();
  }

  void arrived(Slot& slot, int rank) override {
    const DeviceGuard guard(device_);
    GRADCOMM_CUDA_CALL(cudaEventRecord(ready(slot, rank), streams_[rank]),
                       "ThreadCommunicator: cudaEventRecord on rank ", rank);
  }
  // The executing rank's thread may have another current device: every call below sets
  // this group's for its duration.
  void begin(Slot& slot) override {
    const DeviceGuard guard(device_);
    for (int r = 0; r < size_; ++r)
      for (int s = 0; s < size_; ++s)
        GRADCOMM_CUDA_CALL(cudaStreamWaitEvent(streams_[r], ready(slot, s), 0),
                           "ThreadCommunicator: rank ", r, " waits for rank ", s);
  }
  void copy(Slot&, int to, void* dst, const void* src, std::size_t bytes) override {
    if (bytes == 0 || dst == src) return;
    const DeviceGuard guard(device_);
    GRADCOMM_CUDA_CALL(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, streams_[to]),
                       "copy of ", bytes, " bytes to rank ", to);
  }
  void combine(Slot&, int to, DType dtype, ReduceOp op, void* acc, const void* src,
               std::size_t n) override {
    if (n == 0) return;
    const DeviceGuard guard(device_);
    cudaStream_t s = streams_[to];
    switch (dtype) {
      case DType::kFloat32:
        launch<float>(acc, src, n, op, s, CombineFloat{});
        break;
      case DType::kFloat16:
        launch<std::uint16_t>(acc, src, n, op, s, CombineHalf{});
        break;
      case DType::kBFloat16:
        launch<std::uint16_t>(acc, src, n, op, s, CombineBfloat16{});
        break;
      case DType::kInt32:
        launch<std::int32_t>(acc, src, n, op, s, CombineInteger<std::int32_t, std::uint32_t>{});
        break;
      case DType::kUInt32:
        launch<std::uint32_t>(acc, src, n, op, s, CombineInteger<std::uint32_t, std::uint32_t>{});
        break;
      case DType::kUInt8:
        launch<std::uint8_t>(acc, src, n, op, s, CombineInteger<std::uint8_t, std::uint8_t>{});
        break;
    }
    GRADCOMM_CUDA_CALL(cudaGetLastError(), "ThreadCommunicator: reduction kernel of ", n, " ",
                       dtype_name(dtype), " on rank ", to);
  }
  void handoff(Slot& slot, int from, int to) override {
    const DeviceGuard guard(device_);
    GRADCOMM_CUDA_CALL(cudaEventRecord(handoff_event(slot, from), streams_[from]),
                       "ThreadCommunicator: cudaEventRecord on rank ", from);
    GRADCOMM_CUDA_CALL(cudaStreamWaitEvent(streams_[to], handoff_event(slot, from), 0),
                       "ThreadCommunicator: rank ", to, " waits for rank ", from);
  }
  void end(Slot& slot) override {
    const DeviceGuard guard(device_);
    for (int r = 0; r < size_; ++r)
      GRADCOMM_CUDA_CALL(cudaEventRecord(handoff_event(slot, r), streams_[r]),
                         "ThreadCommunicator: cudaEventRecord on rank ", r);
    for (int r = 0; r < size_; ++r) {
      for (int s = 0; s < size_; ++s)
        GRADCOMM_CUDA_CALL(cudaStreamWaitEvent(streams_[r], handoff_event(slot, s), 0),
                           "ThreadCommunicator: rank ", r, " waits for rank ", s);
      GRADCOMM_CUDA_CALL(cudaEventRecord(done(slot, r), streams_[r]),
                         "ThreadCommunicator: cudaEventRecord on rank ", r);
    }
  }
  bool complete(Slot& slot, int rank) override {
    const cudaError_t status = cudaEventQuery(done(slot, rank));
    if (status == cudaSuccess) return true;
    GRADCOMM_CHECK(status == cudaErrorNotReady, ErrorCode::kCuda,
                   "ThreadCommunicator on CUDA, rank ", rank,
                   ": a collective's copies failed: ", cudaGetErrorString(status));
    return false;
  }
  void settle(Slot& slot, int rank) noexcept override { cudaEventSynchronize(done(slot, rank)); }

 private:
  void destroy_streams() noexcept {
    for (cudaStream_t s : owned_) {
      cudaStreamSynchronize(s);
      cudaStreamDestroy(s);
    }
    owned_.clear();
  }
  cudaEvent_t event(Slot& slot, int kind, int rank) const {
    return static_cast<cudaEvent_t>(
        slot.device_events[static_cast<std::size_t>(kind * size_ + rank)]);
  }
  cudaEvent_t ready(Slot& slot, int rank) const { return event(slot, 0, rank); }
  cudaEvent_t handoff_event(Slot& slot, int rank) const { return event(slot, 1, rank); }
  cudaEvent_t done(Slot& slot, int rank) const { return event(slot, 2, rank); }

  int size_;
  int device_;
  std::vector<cudaStream_t> streams_;
  std::vector<cudaStream_t> owned_;
};

}  // namespace

std::unique_ptr<Mover> make_cuda_mover(int size, int device, std::span<void* const> streams) {
  return std::make_unique<CudaMover>(size, device, streams);
}

}  // namespace gradcomm::thread_comm
