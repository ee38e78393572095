#include <cuda_runtime.h>
#include <nccl.h>

#include <thread>
#include <vector>

#include "gradcomm/nccl_communicator.h"

namespace gradcomm {

#define GRADCOMM_CUDA_CALL(call, ...)                                                    \
  do {                                                                                   \
    const cudaError_t _err = (call);                                                     \
    GRADCOMM_CHECK(_err == cudaSuccess, ::gradcomm::ErrorCode::kCuda, __VA_ARGS__, ": ", \
                   cudaGetErrorString(_err));                                            \
  } while (0)

#define GRADCOMM_NCCL_CALL(call, ...)                                                          \
  do {                                                                                         \
    const ncclResult_t _res = (call);                                                          \
    GRADCOMM_CHECK(_res == ncclSuccess, ::gradcomm::ErrorCode::kCommunication, __VA_ARGS__, \
                   ": ", ncclGetErrorString(_res));                                            \
  } while (0)

struct NcclCommunicator::State {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  bool own_stream = false;
  int device = 0;
  int* scratch = nullptr;  // device int for barrier()
  bool aborted = false;
  std::chrono::milliseconds timeout{};
  int rank = 0;
};

namespace {

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return ncclFloat32;
    case DType::kFloat16: return ncclFloat16;
    case DType::kBFloat16: return ncclBfloat16;
    case DType::kInt32: return ncclInt32;
    case DType::kUInt32: return ncclUint32;
    case DType::kUInt8: return ncclUint8;
  }
  return ncclUint8;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  return op == ReduceOp::kSum ? ncclSum : op == ReduceOp::kMax ? ncclMax : ncclMin;
}

// Completion of the work enqueued so far, seen through a CUDA event. wait() polls, so
// that a peer that never arrives ends in an Error (and an aborted communicator) after
// the configured timeout instead of a hang.
class NcclWork final : public Work {
 public:
  NcclWork(std::shared_ptr<NcclCommunicator::State> state, const char* what)
      : state_(std::move(state)), what_(what) {
    GRADCOMM_CUDA_CALL(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming), what_,
                       ": cudaEventCreate on rank ", state_->rank);
    GRADCOMM_CUDA_CALL(cudaEventRecord(event_, state_->stream), what_, ": cudaEventRecord on rank ",
                       state_->rank);
  }
  ~NcclWork() override { cudaEventDestroy(event_); }

  bool test() override {
    const cudaError_t status = cudaEventQuery(event_);
    if (status == cudaSuccess) return true;
    GRADCOMM_CHECK(status == cudaErrorNotReady, ErrorCode::kCuda, what_, " on rank ", state_->rank,
                   ": ", cudaGetErrorString(status));
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(state_->comm, &async);
    GRADCOMM_CHECK(async == ncclSuccess || async == ncclInProgress, ErrorCode::kCommunication,
                   what_, " on rank ", state_->rank, ": NCCL reports ", ncclGetErrorString(async));
    return false;
  }

  void wait() override {
    const auto deadline = std::chrono::steady_clock::now() + state_->timeout;
    while (!test()) {
      if (std::chrono::steady_clock::now() > deadline) {
        if (!state_->aborted) {
          ncclCommAbort(state_->comm);
          state_->aborted = true;
        }
        GRADCOMM_THROW(ErrorCode::kCommunication, what_, " on rank ", state_->rank,
                       " did not complete within ", state_->timeout.count(),
                       " ms (a peer died or is stuck); the NCCL communicator was aborted");
      }
      std::this_thread::yield();
    }
  }

 private:
  std::shared_ptr<NcclCommunicator::State> state_;
  const char* what_;
  cudaEvent_t event_ = nullptr;
};

}  // namespace

NcclCommunicator::NcclCommunicator(Communicator& bootstrap, NcclCommunicatorOptions options)
    : rank_(bootstrap.rank()), size_(bootstrap.size()), state_(std::make_shared<State>()) {
  GRADCOMM_CHECK(bootstrap.device() == Device::kCpu, ErrorCode::kInvalidArgument,
                 "NcclCommunicator: bootstrap over a host communicator (MPI)");
  State& s = *state_;
  s.rank = rank_;
  s.timeout = options.timeout;
  if (options.device < 0) {
    GRADCOMM_CUDA_CALL(cudaGetDevice(&s.device), "NcclCommunicator: cudaGetDevice on rank ", rank_);
  } else {
    s.device = options.device;
  }
  GRADCOMM_CUDA_CALL(cudaSetDevice(s.device), "NcclCommunicator: cudaSetDevice(", s.device,
                     ") on rank ", rank_);
  if (options.stream) {
    s.stream = static_cast<cudaStream_t>(options.stream);
  } else {
    GRADCOMM_CUDA_CALL(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking),
                       "NcclCommunicator: cudaStreamCreate on rank ", rank_);
    s.own_stream = true;
  }
  GRADCOMM_CUDA_CALL(cudaMalloc(&s.scratch, sizeof(int)), "NcclCommunicator: cudaMalloc on rank ", rank_);

  ncclUniqueId id{};
  if (rank_ == 0) GRADCOMM_NCCL_CALL(ncclGetUniqueId(&id), "ncclGetUniqueId on rank 0");
  TensorView id_view(&id, sizeof id, DType::kUInt8);
  bootstrap.broadcast(id_view, 0)->wait();
  GRADCOMM_NCCL_CALL(ncclCommInitRank(&s.comm, size_, id, rank_), "ncclCommInitRank on rank ",
                     rank_, " of ", size_);
}

NcclCommunicator::~NcclCommunicator() {
  State& s = *state_;
  if (s.comm) {
    if (s.aborted) {
      // already torn down by ncclCommAbort
    } else {
      cudaStreamSynchronize(s.stream);
      ncclCommDestroy(s.comm);
    }
  }
  if (s.scratch) cudaFree(s.scratch);
  if (s.own_stream && s.stream) cudaStreamDestroy(s.stream);
}

void* NcclCommunicator::stream() const noexcept { return state_->stream; }

std::string NcclCommunicator::describe() const {
  return "NcclCommunicator(rank " + std::to_string(rank_) + " of " + std::to_string(size_) +
         ", cuda:" + std::to_string(state_->device) + ")";
}

WorkHandle NcclCommunicator::record(const char* what) {
  GRADCOMM_CHECK(!state_->aborted, ErrorCode::kCommunication, what, " on rank ", rank_,
                 ": the NCCL communicator was aborted");
  return WorkHandle(new NcclWork(state_, what));
}

WorkHandle NcclCommunicator::allreduce(TensorView send, TensorView recv, ReduceOp op) {
  check_allreduce(send, recv);
  count_traffic(allreduce_wire_bytes(send.nbytes(), size_));
  GRADCOMM_NCCL_CALL(ncclAllReduce(send.data(), recv.data(), send.numel(), nccl_type(send.dtype()),
                                   nccl_op(op), state_->comm, state_->stream),
                     "allreduce of ", send.describe(), " on rank ", rank_);
  return record("allreduce");
}

WorkHandle NcclCommunicator::allgather(TensorView send, TensorView recv) {
  check_allgather(send, recv);
  count_traffic(allgather_wire_bytes(send.nbytes(), size_));
  GRADCOMM_NCCL_CALL(ncclAllGather(send.data(), recv.data(), send.numel(), nccl_type(send.dtype()),
                                   state_->comm, state_->stream),
                     "allgather of ", send.describe(), " on rank ", rank_);
  return record("allgather");
}

WorkHandle NcclCommunicator::allgatherv(TensorView send, TensorView recv,
                                        std::span<const std::size_t> counts) {
  check_allgatherv(send, recv, counts);
  count_traffic(send.nbytes() * static_cast<std::uint64_t>(size_ - 1));
  // NCCL has no allgatherv: one broadcast per rank, grouped into a single launch.
  const std::size_t esize = dtype_size(recv.dtype());
  GRADCOMM_NCCL_CALL(ncclGroupStart(), "allgatherv group start on rank ", rank_);
  std::size_t offset = 0;
  for (int r = 0; r < size_; ++r) {
    void* dst = static_cast<char*>(recv.data()) + offset * esize;
    const ncclResult_t res = ncclBroadcast(r == rank_ ? send.data() : dst, dst, counts[r],
                                           nccl_type(recv.dtype()), r, state_->comm, state_->stream);
    if (res != ncclSuccess) {
      ncclGroupEnd();
      GRADCOMM_THROW(ErrorCode::kCommunication, "allgatherv (broadcast from rank ", r, ") on rank ",
                     rank_, ": ", ncclGetErrorString(res));
    }
    offset += counts[r];
  }
  GRADCOMM_NCCL_CALL(ncclGroupEnd(), "allgatherv on rank ", rank_);
  return record("allgatherv");
}

WorkHandle NcclCommunicator::alltoall(TensorView send, TensorView recv) {
  check_alltoall(send, recv);
  count_traffic(alltoall_wire_bytes(send.nbytes(), size_));
  const std::size_t chunk = send.numel() / static_cast<std::size_t>(size_);
  const std::size_t bytes = chunk * dtype_size(send.dtype());
  GRADCOMM_NCCL_CALL(ncclGroupStart(), "alltoall group start on rank ", rank_);
  for (int r = 0; r < size_; ++r) {
    const ncclResult_t a = ncclSend(static_cast<char*>(send.data()) + r * bytes, chunk,
                                    nccl_type(send.dtype()), r, state_->comm, state_->stream);
    const ncclResult_t b = ncclRecv(static_cast<char*>(recv.data()) + r * bytes, chunk,
                                    nccl_type(recv.dtype()), r, state_->comm, state_->stream);
    if (a != ncclSuccess || b != ncclSuccess) {
      ncclGroupEnd();
      GRADCOMM_THROW(ErrorCode::kCommunication, "alltoall with rank ", r, " on rank ", rank_, ": ",
                     ncclGetErrorString(a != ncclSuccess ? a : b));
    }
  }
  GRADCOMM_NCCL_CALL(ncclGroupEnd(), "alltoall on rank ", rank_);
  return record("alltoall");
}

WorkHandle NcclCommunicator::alltoallv(TensorView send, std::span<const std::size_t> send_counts,
                                       TensorView recv, std::span<const std::size_t> recv_counts) {
  check_alltoallv(send, send_counts, recv, recv_counts);
  count_traffic(alltoallv_wire_bytes(send_counts, dtype_size(send.dtype()), rank_));
  const std::size_t esize = dtype_size(send.dtype());
  GRADCOMM_NCCL_CALL(ncclGroupStart(), "alltoallv group start on rank ", rank_);
  std::size_t sent = 0, received = 0;
  for (int r = 0; r < size_; ++r) {
    const auto i = static_cast<std::size_t>(r);
    ncclResult_t a = ncclSuccess, b = ncclSuccess;
    if (send_counts[i] > 0) {
      a = ncclSend(static_cast<char*>(send.data()) + sent * esize, send_counts[i],
                   nccl_type(send.dtype()), r, state_->comm, state_->stream);
    }
    if (recv_counts[i] > 0) {
      b = ncclRecv(static_cast<char*>(recv.data()) + received * esize, recv_counts[i],
                   nccl_type(recv.dtype()), r, state_->comm, state_->stream);
    }
    if (a != ncclSuccess || b != ncclSuccess) {
      ncclGroupEnd();
      GRADCOMM_THROW(ErrorCode::kCommunication, "alltoallv with rank ", r, " on rank ", rank_, ": ",
                     ncclGetErrorString(a != ncclSuccess ? a : b));
    }
    sent += send_counts[i];
    received += recv_counts[i];
  }
  GRADCOMM_NCCL_CALL(ncclGroupEnd(), "alltoallv on rank ", rank_);
  return record("alltoallv");
}

WorkHandle NcclCommunicator::broadcast(TensorView buffer, int root) {
  check_broadcast(buffer, root);
  if (rank_ == root) count_traffic(buffer.nbytes());
  GRADCOMM_NCCL_CALL(ncclBroadcast(buffer.data(), buffer.data(), buffer.numel(),
                                   nccl_type(buffer.dtype()), root, state_->comm, state_->stream),
                     "broadcast of ", buffer.describe(), " from root ", root, " on rank ", rank_);
  return record("broadcast");
}

WorkHandle NcclCommunicator::barrier() {
  GRADCOMM_NCCL_CALL(ncclAllReduce(state_->scratch, state_->scratch, 1, ncclInt32, ncclSum,
                                   state_->comm, state_->stream),
                     "barrier on rank ", rank_);
  return record("barrier");
}

void NcclCommunicator::abort(const std::string& reason) {
  (void)reason;
  if (!state_->aborted && state_->comm) {
    ncclCommAbort(state_->comm);
    state_->aborted = true;
  }
}

}  // namespace gradcomm
