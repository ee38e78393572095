// NcclCommunicator: setup and teardown, and each collective as NCCL calls on the stream,
// settled under the timeout (state_nccl.cpp), then an event (a pooled work) recorded.
#include <exception>
#include <thread>

#include "comm/nccl/nccl_state.h"

namespace gradcomm {
namespace {

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return ncclFloat32;
    case DType::kFloat16:
      return ncclFloat16;
    case DType::kBFloat16:
      return ncclBfloat16;
    case DType::kInt32:
      return ncclInt32;
    case DType::kUInt32:
      return ncclUint32;
    case DType::kUInt8:
      return ncclUint8;
  }
  return ncclUint8;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  return op == ReduceOp::kSum ? ncclSum : op == ReduceOp::kMax ? ncclMax : ncclMin;
}

// What rank 0 broadcasts at setup: the unique id, or why it has none (so that every rank
// fails together instead of the others waiting for an id that never comes).
struct Invitation {
  ncclUniqueId id;
  std::int32_t status;  // ncclResult_t of ncclGetUniqueId on rank 0
};

}  // namespace

NcclCommunicator::NcclCommunicator(Communicator& bootstrap, NcclCommunicatorOptions options)
    : rank_(bootstrap.rank()), size_(bootstrap.size()), state_(std::make_shared<State>()) {
  GRADCOMM_CHECK(bootstrap.device() == Device::kCpu, ErrorCode::kInvalidArgument,
                 "NcclCommunicator: bootstrap over a host communicator (MPI), not ",
                 bootstrap.describe());
  GRADCOMM_CHECK_ARG(options.timeout.count() > 0, "NcclCommunicator: timeout ",
                     options.timeout.count(),
                     " ms: it bounds the setup and every wait, and must be > 0");
  State& s = *state_;
  s.rank = rank_;
  s.size = size_;
  s.timeout = options.timeout;
  s.uncaught_at_construction = std::uncaught_exceptions();
  int device = options.device;
  if (device < 0)
    GRADCOMM_CUDA_CALL(cudaGetDevice(&device), "NcclCommunicator: cudaGetDevice on rank ", rank_);
  const detail::DeviceGuard guard(device);  // NCCL binds the communicator to the current device
  s.open(device, options.stream);

  Invitation invitation{};
  if (rank_ == 0) invitation.status = ncclGetUniqueId(&invitation.id);
  bootstrap.broadcast(TensorView(&invitation, sizeof invitation, DType::kUInt8), 0)->wait();
  GRADCOMM_CHECK(invitation.status == ncclSuccess, ErrorCode::kCommunication,
                 "NcclCommunicator on rank ", rank_, " of ", size_,
                 ": ncclGetUniqueId failed on rank 0: ",
                 ncclGetErrorString(static_cast<ncclResult_t>(invitation.status)));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // a peer that never joins ends in a timeout, not a hang
  const ncclResult_t started =
      ncclCommInitRankConfig(&s.comm, size_, invitation.id, rank_, &config);
  s.settle(started, s.comm, detail::concat("ncclCommInitRankConfig (cuda:", device, ")"));
}

NcclCommunicator::NcclCommunicator(std::shared_ptr<State> state)
    : rank_(state->rank), size_(state->size), state_(std::move(state)) {}

NcclCommunicator::~NcclCommunicator() {
  State& s = *state_;
  if (!s.comm || s.aborted) return;  // the State frees the rest
  try {
    const detail::DeviceGuard guard(s.device);
    if (std::uncaught_exceptions() > s.uncaught_at_construction) {
      // Waiting for the queued collectives could hang: the peers may never come.
      s.abort_comm("destroyed while an exception unwinds");
      return;
    }
    // Drain the stream under the timeout (cudaStreamSynchronize would wait forever on a
    // collective whose peer died), then finalize and destroy.
    WorkHandle drained = record("teardown");
    drained->wait();
    s.settle(ncclCommFinalize(s.comm), s.comm, "ncclCommFinalize");
    ncclCommDestroy(s.comm);
    s.comm = nullptr;
  } catch (...) {
    s.abort_comm("the teardown failed");
  }
}

void* NcclCommunicator::stream() const noexcept { return state_->stream; }

std::string NcclCommunicator::describe() const {
  return "NcclCommunicator(rank " + std::to_string(rank_) + " of " + std::to_string(size_) +
         ", cuda:" + std::to_string(state_->device) + ")";
}

WorkHandle NcclCommunicator::record(const char* what) {
  State& s = *state_;
  NcclWork* w;
  if (s.free_works.empty()) {
    w = new NcclWork();
    const cudaError_t made = cudaEventCreateWithFlags(&w->event, cudaEventDisableTiming);
    if (made != cudaSuccess) {
      delete w;
      GRADCOMM_THROW(ErrorCode::kCuda, what, ": cudaEventCreate on rank ", rank_, ": ",
                     cudaGetErrorString(made));
    }
  } else {
    w = s.free_works.back();
    s.free_works.pop_back();
  }
  w->state = state_;
  w->what = what;
  w->complete = false;
  WorkHandle handle(w);
  GRADCOMM_CUDA_CALL(cudaEventRecord(w->event, s.stream), what, ": cudaEventRecord on rank ",
                     rank_);
  return handle;
}

WorkHandle NcclCommunicator::allreduce(TensorView send, TensorView recv, ReduceOp op) {
  check_allreduce(send, recv);
  State& s = *state_;
  s.check_usable("allreduce");
  const detail::DeviceGuard guard(s.device);
  count_traffic(allreduce_wire_bytes(send.nbytes(), size_));
  s.settle(ncclAllReduce(send.data(), recv.data(), send.numel(), nccl_type(send.dtype()),
                         nccl_op(op), s.comm, s.stream),
           s.comm, "allreduce of " + send.describe());
  return record("allreduce");
}

WorkHandle NcclCommunicator::allgather(TensorView send, TensorView recv) {
  check_allgather(send, recv);
  State& s = *state_;
  s.check_usable("allgather");
  const detail::DeviceGuard guard(s.device);
  count_traffic(allgather_wire_bytes(send.nbytes(), size_));
  s.settle(ncclAllGather(send.data(), recv.data(), send.numel(), nccl_type(send.dtype()), s.comm,
                         s.stream),
           s.comm, "allgather of " + send.describe());
  return record("allgather");
}

// The calls of a group (ncclGroupStart/End): each call's own result, then the group's.
// A failed call inside still ends the group, so NCCL is not left inside one.
#define GRADCOMM_NCCL_GROUP_CALL(call, ...)                \
  do {                                                     \
    const ncclResult_t _res = (call);                      \
    if (_res != ncclSuccess && _res != ncclInProgress) {   \
      ncclGroupEnd();                                      \
      s.settle(_res, s.comm, detail::concat(__VA_ARGS__)); \
    }                                                      \
  } while (0)

WorkHandle NcclCommunicator::allgatherv(TensorView send, TensorView recv,
                                        std::span<const std::size_t> counts) {
  check_allgatherv(send, recv, counts);
  State& s = *state_;
  s.check_usable("allgatherv");
  const detail::DeviceGuard guard(s.device);
  count_traffic(send.nbytes() * static_cast<std::uint64_t>(size_ - 1));
  // NCCL has no allgatherv: one broadcast per rank, grouped into a single launch.
  const std::size_t esize = dtype_size(recv.dtype());
  s.settle(ncclGroupStart(), s.comm, "allgatherv: ncclGroupStart");
  std::size_t offset = 0;
  for (int r = 0; r < size_; ++r) {
    void* dst = static_cast<char*>(recv.data()) + offset * esize;
    GRADCOMM_NCCL_GROUP_CALL(ncclBroadcast(r == rank_ ? send.data() : dst, dst, counts[r],
                                           nccl_type(recv.dtype()), r, s.comm, s.stream),
                             "allgatherv (broadcast from rank ", r, ")");
    offset += counts[r];
  }
  s.settle(ncclGroupEnd(), s.comm, "allgatherv of " + recv.describe());
  return record("allgatherv");
}

WorkHandle NcclCommunicator::alltoall(TensorView send, TensorView recv) {
  check_alltoall(send, recv);
  State& s = *state_;
  s.check_usable("alltoall");
  const detail::DeviceGuard guard(s.device);
  count_traffic(alltoall_wire_bytes(send.nbytes(), size_));
  const std::size_t chunk = send.numel() / static_cast<std::size_t>(size_);
  const std::size_t bytes = chunk * dtype_size(send.dtype());
  s.settle(ncclGroupStart(), s.comm, "alltoall: ncclGroupStart");
  for (int r = 0; r < size_; ++r) {
    GRADCOMM_NCCL_GROUP_CALL(ncclSend(static_cast<char*>(send.data()) + r * bytes, chunk,
                                      nccl_type(send.dtype()), r, s.comm, s.stream),
                             "alltoall: send to rank ", r);
    GRADCOMM_NCCL_GROUP_CALL(ncclRecv(static_cast<char*>(recv.data()) + r * bytes, chunk,
                                      nccl_type(recv.dtype()), r, s.comm, s.stream),
                             "alltoall: receive from rank ", r);
  }
  s.settle(ncclGroupEnd(), s.comm, "alltoall of " + send.describe());
  return record("alltoall");
}

WorkHandle NcclCommunicator::alltoallv(TensorView send, std::span<const std::size_t> send_counts,
                                       TensorView recv, std::span<const std::size_t> recv_counts) {
  check_alltoallv(send, send_counts, recv, recv_counts);
  State& s = *state_;
  s.check_usable("alltoallv");
  const detail::DeviceGuard guard(s.device);
  count_traffic(alltoallv_wire_bytes(send_counts, dtype_size(send.dtype()), rank_));
  const std::size_t esize = dtype_size(send.dtype());
  s.settle(ncclGroupStart(), s.comm, "alltoallv: ncclGroupStart");
  std::size_t sent = 0, received = 0;
  for (int r = 0; r < size_; ++r) {
    const auto i = static_cast<std::size_t>(r);
    if (send_counts[i] > 0) {
      GRADCOMM_NCCL_GROUP_CALL(
          ncclSend(static_cast<char*>(send.data()) + sent * esize, send_counts[i],
                   nccl_type(send.dtype()), r, s.comm, s.stream),
          "alltoallv: send to rank ", r);
    }
    if (recv_counts[i] > 0) {
      GRADCOMM_NCCL_GROUP_CALL(
          ncclRecv(static_cast<char*>(recv.data()) + received * esize, recv_counts[i],
                   nccl_type(recv.dtype()), r, s.comm, s.stream),
          "alltoallv: receive from rank ", r);
    }
    sent += send_counts[i];
    received += recv_counts[i];
  }
  s.settle(ncclGroupEnd(), s.comm, "alltoallv of " + send.describe());
  return record("alltoallv");
}

WorkHandle NcclCommunicator::broadcast(TensorView buffer, int root) {
  check_broadcast(buffer, root);
  State& s = *state_;
  s.check_usable("broadcast");
  const detail::DeviceGuard guard(s.device);
  if (rank_ == root) count_traffic(buffer.nbytes());
  s.settle(ncclBroadcast(buffer.data(), buffer.data(), buffer.numel(), nccl_type(buffer.dtype()),
                         root, s.comm, s.stream),
           s.comm, detail::concat("broadcast of ", buffer.describe(), " from root ", root));
  return record("broadcast");
}

WorkHandle NcclCommunicator::barrier() {
  State& s = *state_;
  s.check_usable("barrier");
  const detail::DeviceGuard guard(s.device);
  s.settle(ncclAllReduce(s.scratch, s.scratch, 1, ncclInt32, ncclSum, s.comm, s.stream), s.comm,
           "barrier");
  return record("barrier");
}

void NcclCommunicator::follow_stream(void* cuda_stream) {
  State& s = *state_;
  const auto producer = static_cast<cudaStream_t>(cuda_stream);
  if (producer == s.stream) return;  // one stream: already in order
  s.check_usable("follow_stream");
  const detail::DeviceGuard guard(s.device);
  GRADCOMM_CUDA_CALL(cudaEventRecord(s.follow_event, producer), "follow_stream on rank ", rank_,
                     " (cuda:", s.device, "): cudaEventRecord on the caller's stream (it must be on this device)");
  GRADCOMM_CUDA_CALL(cudaStreamWaitEvent(s.stream, s.follow_event, 0), "follow_stream on rank ",
                     rank_, ": cudaStreamWaitEvent");
}

void NcclCommunicator::abort(const std::string& reason) {
  state_->abort_comm("rank " + std::to_string(rank_) + " aborted: " + reason);
}

}  // namespace gradcomm
