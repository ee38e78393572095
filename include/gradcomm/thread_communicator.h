// ThreadCommunicator: p ranks in one process, one thread each, for tests: the Exchanger
// and the compressors run on p ranks without mpirun, and several ranks share one GPU
// (which NCCL refuses: "Duplicate GPU detected").
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <vector>

#include "gradcomm/communicator.h"

namespace gradcomm {

struct ThreadCommunicatorOptions {
  // Where the buffers live. kCuda: every rank's buffers are on one CUDA device, each rank
  // has its own stream, and a collective is device-to-device copies (and, for allreduce,
  // a reduction kernel) on the streams of the ranks it writes to.
  Device device = Device::kCpu;
  int cuda_device = -1;  // kCuda: the device; -1: the creating thread's current device
  // kCuda: one cudaStream_t per rank to order collectives after; empty: a non-blocking
  // stream of its own per rank (stream()).
  std::vector<void*> streams{};
  // Like MpiCommunicatorOptions::collective_timeout: a wait() that has not completed after
  // this long throws kCommunication naming the collective and the ranks that have not
  // called it. Zero waits forever.
  std::chrono::milliseconds collective_timeout{0};
  // Emulated hosts for split_shared(): ranks [h*R, (h+1)*R) share host h. 0: one host.
  int ranks_per_host = 0;
};

// Results are bitwise identical on every rank: a reduction runs once, in rank order
// (((x0 op x1) op x2) ...), 16-bit values rounded back after every step as
// MpiCommunicator's reductions do, and is then copied to every rank. (MpiCommunicator's
// ring sums chunk c starting at rank c, so inexact float sums over 3 or more ranks can
// differ from it in the last bits; exact sums, and every sum over 2 ranks, are equal.)
//
// A collective runs when the last rank has called it, in the thread of that rank; until
// then the others' calls return at once (non-blocking, like every Communicator). Ranks
// that pass disagreeing sizes, dtypes, ops, roots or counts get kSizeMismatch on every
// rank (the check is free here). On CUDA, the copies are enqueued when the last rank
// arrives, after each caller's work queued on its stream before its call (an event):
// work the caller queues after the call is not ordered after the collective; wait() (or
// test() returning true) first.
class ThreadCommunicator final : public Communicator {
 public:
  // `size` communicators sharing one rendezvous: element r is rank r. Each is used from
  // one thread at a time (its rank's); all must stay alive until every rank is done.
  static std::vector<std::unique_ptr<ThreadCommunicator>> create(
      int size, ThreadCommunicatorOptions options = {});
  // Runs body(rank's communicator) on `size` threads and joins them. A rank that throws
  // aborts the group, so the others end with an Error instead of waiting for it; the
  // first exception thrown is rethrown here.
  static void run(int size, const std::function<void(ThreadCommunicator&)>& body,
                  ThreadCommunicatorOptions options = {});

  ~ThreadCommunicator() override;
  ThreadCommunicator(const ThreadCommunicator&) = delete;
  ThreadCommunicator& operator=(const ThreadCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override;
  Device device() const override;
  std::string describe() const override;
  void* stream() const noexcept;  // kCuda: this rank's cudaStream_t; nullptr on the CPU

  WorkHandle allreduce(TensorView send, TensorView recv, ReduceOp op) override;
  WorkHandle allgather(TensorView send, TensorView recv) override;
  WorkHandle allgatherv(TensorView send, TensorView recv,
                        std::span<const std::size_t> counts) override;
  WorkHandle alltoall(TensorView send, TensorView recv) override;
  WorkHandle alltoallv(TensorView send, std::span<const std::size_t> send_counts, TensorView recv,
                       std::span<const std::size_t> recv_counts) override;
  WorkHandle broadcast(TensorView buffer, int root) override;
  WorkHandle barrier() override;
  // Ends every collective of this group, and of the groups split from it or from which it
  // was split, that has not been seen complete, now and later, with kCommunication
  // naming this rank and `reason` (as MPI_Abort ends the whole job).
  void abort(const std::string& reason) override;

  // New groups on the same device; on CUDA each gets streams of its own. split_shared
  // follows ThreadCommunicatorOptions::ranks_per_host of the group created first.
  std::unique_ptr<Communicator> split(int color, int key) override;
  std::unique_ptr<Communicator> split_shared() override;

  class Group;  // the rendezvous the ranks share (src/comm/thread/)

 private:
  ThreadCommunicator(std::shared_ptr<Group> group, int rank);
  std::unique_ptr<ThreadCommunicator> split_into(int color, int key);

  std::shared_ptr<Group> group_;
  int rank_ = 0;
};

}  // namespace gradcomm
