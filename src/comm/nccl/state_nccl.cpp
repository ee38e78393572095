// NcclCommunicator::State (the handles, settling non-blocking calls, aborting) and the
// pooled works whose events tell when a collective has finished on the device.
#include <thread>

#include "comm/nccl/nccl_state.h"

namespace gradcomm {

NcclCommunicator::State::~State() {
  try {
    const detail::DeviceGuard guard(device);
    if (comm && !aborted) ncclCommAbort(comm);  // not torn down by the communicator: a failed setup
    for (NcclWork* w : free_works) {
      if (w->event) cudaEventDestroy(w->event);
      delete w;
    }
    if (follow_event) cudaEventDestroy(follow_event);
    if (scratch) cudaFree(scratch);
    if (own_stream && stream) cudaStreamDestroy(stream);
  } catch (...) {  // no device to switch to: nothing of ours can be freed on it either
  }
}

void NcclCommunicator::State::open(int on_device, void* caller_stream) {
  device = on_device;
  if (caller_stream) {
    stream = static_cast<cudaStream_t>(caller_stream);
  } else {
    GRADCOMM_CUDA_CALL(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
                       "NcclCommunicator: cudaStreamCreate on rank ", rank, " (cuda:", device, ")");
    own_stream = true;
  }
  GRADCOMM_CUDA_CALL(cudaMalloc(&scratch, sizeof(int)), "NcclCommunicator: cudaMalloc on rank ",
                     rank, " (cuda:", device, ")");
  GRADCOMM_CUDA_CALL(cudaEventCreateWithFlags(&follow_event, cudaEventDisableTiming),
                     "NcclCommunicator: cudaEventCreate on rank ", rank, " (cuda:", device, ")");
}

void NcclCommunicator::State::check_usable(const char* what) const {
  GRADCOMM_CHECK(!aborted, ErrorCode::kCommunication, what, " on rank ", rank, " of ", size,
                 ": the NCCL communicator was aborted (", abort_reason, "); make a new one");
}

void NcclCommunicator::State::abort_comm(const std::string& reason) noexcept {
  if (aborted || !comm) return;
  aborted = true;
  try {
    abort_reason = reason;
  } catch (...) {
  }
  ncclCommAbort(comm);
}

void NcclCommunicator::State::settle(ncclResult_t result, ncclComm_t which,
                                     const std::string& what) {
  const auto start = std::chrono::steady_clock::now();
  while (result == ncclInProgress) {
    const auto waited = std::chrono::steady_clock::now() - start;
    if (waited > timeout) {
      const std::string reason =
          detail::concat(what, " on rank ", rank, " of ", size, " did not finish within ",
                         std::chrono::duration<double>(waited).count(),
                         " s (timeout): a peer died, hangs, or never called it");
      if (which && which != comm) ncclCommAbort(which);
      abort_comm(reason);
      GRADCOMM_THROW(ErrorCode::kCommunication, reason, "; the NCCL communicator was aborted");
    }
    std::this_thread::yield();
    const ncclResult_t polled = ncclCommGetAsyncError(which, &result);
    if (polled != ncclSuccess) result = polled;
  }
  if (result != ncclSuccess) {
    const std::string reason =
        detail::concat(what, " on rank ", rank, " of ", size, ": NCCL reports ",
                       ncclGetErrorString(result), " (", ncclGetLastError(which), ")");
    if (which && which != comm) ncclCommAbort(which);
    abort_comm(reason);
    GRADCOMM_THROW(ErrorCode::kCommunication, reason, "; the NCCL communicator was aborted");
  }
}

bool NcclWork::test() {
  if (complete) return true;
  NcclCommunicator::State& s = *state;
  s.check_usable(what);  // after an abort: fail, never query the aborted communicator
  const cudaError_t status = cudaEventQuery(event);
  if (status == cudaSuccess) {
    complete = true;
    return true;
  }
  if (status != cudaErrorNotReady) {
    const std::string reason = detail::concat(what, " on rank ", s.rank, " (cuda:", s.device,
                                              "): ", cudaGetErrorString(status));
    s.abort_comm(reason);
    GRADCOMM_THROW(ErrorCode::kCuda, reason, "; the NCCL communicator was aborted");
  }
  ncclResult_t async = ncclSuccess;
  const ncclResult_t polled = ncclCommGetAsyncError(s.comm, &async);
  if (polled != ncclSuccess) async = polled;
  if (async != ncclSuccess && async != ncclInProgress) {
    // Asynchronous errors (a peer's connection lost) are fatal for the communicator.
    const std::string reason =
        detail::concat(what, " on rank ", s.rank, " of ", s.size, ": NCCL reports ",
                       ncclGetErrorString(async), " (", ncclGetLastError(s.comm), ")");
    s.abort_comm(reason);
    GRADCOMM_THROW(ErrorCode::kCommunication, reason, "; the NCCL communicator was aborted");
  }
  return false;
}

void NcclWork::wait() {
  if (complete) return;
  NcclCommunicator::State& s = *state;
  const auto start = std::chrono::steady_clock::now();
  while (!test()) {
    const auto waited = std::chrono::steady_clock::now() - start;
    if (waited > s.timeout) {
      const std::string reason =
          detail::concat(what, " on rank ", s.rank, " of ", s.size, " did not complete within ",
                         std::chrono::duration<double>(waited).count(),
                         " s (timeout): a peer died, hangs, or stopped calling collectives");
      s.abort_comm(reason);
      GRADCOMM_THROW(ErrorCode::kCommunication, reason, "; the NCCL communicator was aborted");
    }
    std::this_thread::yield();
  }
}

void NcclWork::wait_stream(void* cuda_stream) {
  if (complete) return;  // the host saw it end: whatever is enqueued from now on follows
  NcclCommunicator::State& s = *state;
  s.check_usable(what);  // an aborted collective's buffers hold garbage: never hand them on
  const auto waiting = static_cast<cudaStream_t>(cuda_stream);
  if (waiting != s.stream) {
    const detail::DeviceGuard guard(s.device);
    GRADCOMM_CUDA_CALL(cudaStreamWaitEvent(waiting, event, 0), what, " on rank ", s.rank,
                       " (cuda:", s.device, "): cudaStreamWaitEvent");
  }
  stream_ordered = true;
}

void NcclWork::release() noexcept {
  if (!complete && !stream_ordered) {  // complete it (or fail), so the buffers are not written later
    try {
      wait();
    } catch (...) {
    }
  }
  // A recycled event may be recorded again at once: a stream already waiting on it keeps
  // the record it was given.
  stream_ordered = false;
  const std::shared_ptr<NcclCommunicator::State> owner = std::move(state);  // may be the last owner
  try {
    owner->free_works.push_back(this);
  } catch (...) {
    cudaEventDestroy(event);
    delete this;
  }
}

}  // namespace gradcomm
