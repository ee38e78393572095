// NcclCommunicator: collectives over NCCL on CUDA device buffers, on one CUDA stream.
#pragma once

#include <chrono>
#include <memory>

#include "gradcomm/communicator.h"

namespace gradcomm {

struct NcclCommunicatorOptions {
  // CUDA device; -1: the calling thread's current device (gradcomm::local_cuda_device()
  // picks one per local rank and makes it current). Every call below makes it current
  // for its duration, whatever device the calling thread has set.
  int device = -1;
  void* stream = nullptr;     // cudaStream_t to enqueue on; nullptr: a stream of our own
  // The setup, every wait() and the teardown give up after this long (> 0): the
  // communicator is aborted (ncclCommAbort) and an Error names the call, so a peer that
  // died (before the setup, or in a collective) ends the job instead of hanging it.
  std::chrono::milliseconds timeout{std::chrono::minutes(10)};
};

// Bootstrapped from a host communicator (MPI): rank 0 makes the NCCL unique id and
// broadcasts it over `bootstrap`. Rank and size follow `bootstrap`. One rank per device:
// NCCL refuses two ranks of one communicator on one device (ThreadCommunicator runs
// several ranks on one GPU for tests).
//
// Failures: the NCCL communicator is non-blocking, so no call waits without a bound. A
// timeout, an asynchronous NCCL error found by test()/wait(), or abort() aborts it
// (ncclCommAbort); from then on every collective not yet seen complete, and every new
// one, throws kCommunication naming the reason. Destroyed while an exception unwinds, it
// aborts instead of waiting for its queued collectives (peers may never come).
// A work handed to wait_stream() is watched by the device, not the host: its release
// does not wait, and a collective that never ends shows as a stream that never drains.
// Keep the bound by wait()ing (or test()ing) the step's last work before synchronising
// with that stream: NCCL's stream runs in order, so it covers the earlier ones.
class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Communicator& bootstrap, NcclCommunicatorOptions options = {});
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return Device::kCuda; }
  std::string describe() const override;
  void* stream() const noexcept;  // the cudaStream_t collectives run on

  WorkHandle allreduce(TensorView send, TensorView recv, ReduceOp op) override;
  WorkHandle allgather(TensorView send, TensorView recv) override;
  WorkHandle allgatherv(TensorView send, TensorView recv,
                        std::span<const std::size_t> counts) override;
  WorkHandle alltoall(TensorView send, TensorView recv) override;
  WorkHandle alltoallv(TensorView send, std::span<const std::size_t> send_counts, TensorView recv,
                       std::span<const std::size_t> recv_counts) override;
  WorkHandle broadcast(TensorView buffer, int root) override;
  WorkHandle barrier() override;
  void abort(const std::string& reason) override;
  // Collectives issued after this call start on NCCL's stream only once the work queued
  // on `cuda_stream` so far has run (an event, no host wait). Its works' wait_stream()
  // makes a stream wait on the collective the same way, so a caller encodes layer i+1 on
  // its stream while layer i's collective runs on stream().
  void follow_stream(void* cuda_stream) override;

  // ncclCommSplit: the new communicator is on the same device with a stream of its own
  // and the same timeout. split_shared() groups the ranks whose hostnames match.
  std::unique_ptr<Communicator> split(int color, int key) override;
  std::unique_ptr<Communicator> split_shared() override;

  struct State;  // NCCL and CUDA handles (kept out of this header)

 private:
  explicit NcclCommunicator(std::shared_ptr<State> state);
  WorkHandle record(const char* what);
  int rank_ = 0;
  int size_ = 1;
  std::shared_ptr<State> state_;
};

}  // namespace gradcomm
