// MpiCommunicator: collectives over MPI on host buffers.
#pragma once

#include <mpi.h>

#include <chrono>
#include <initializer_list>
#include <memory>

#include "gradcomm/communicator.h"

namespace gradcomm {

struct MpiCommunicatorOptions {
  // Before every collective, agree on its size with one small allreduce, so that ranks
  // passing different sizes get a gradcomm::Error on every rank instead of undefined
  // behaviour. Costs one latency per call: for debugging and tests; the Exchanger checks
  // sizes once at setup instead.
  bool verify_sizes = false;
  // Watchdog: a wait() that has not completed after this long throws gradcomm::Error
  // (kCommunication) naming the collective, its size, the rank and the time waited, so a
  // peer that hangs (or died where the MPI runtime does not end the job) ends in an error
  // instead of a hang; the caller then abort()s. Zero waits forever (plain MPI_Wait).
  // Checked by polling MPI_Test, which costs what MPI_Wait's own progress loop costs.
  std::chrono::milliseconds collective_timeout{0};
  // At destruction the ranks meet in one barrier (on a communicator of its own) for up to
  // this long; see the class comment for what an exception unwinding past it then does.
  // Without an exception, a rank that waited this long goes on to free the communicator.
  std::chrono::milliseconds teardown_grace{std::chrono::seconds(5)};
};

// Duplicates `comm` (so gradcomm's traffic never matches the user's messages) and frees
// the duplicate on destruction. Errors from MPI are returned, not fatal: the duplicate
// gets MPI_ERRORS_RETURN and each failure becomes a gradcomm::Error naming the
// collective, the rank and the sizes.
//
// Built with CUDA it also takes CUDA buffers, for MPI builds that are not CUDA-aware (and
// tests that share one GPU between ranks): each is staged through a pinned host buffer
// (grow-only, pooled: no allocation in steady state). Per collective: the inputs are
// copied to the host on the stream given by set_cuda_stream() and that stream is
// synchronised (MPI must read complete data), MPI runs on the host copies, and when the
// collective completes (wait(), or test() returning true) the results are copied back on
// the same stream, synchronised again, so they are in device memory when it returns.
//
// Destruction is collective, like MPI_Comm_free: the ranks meet in a barrier for up to
// teardown_grace. When an exception unwinds past the communicator (std::uncaught_
// exceptions() above its count at construction), that barrier tells the two cases apart:
// - every rank comes (the failure is the same everywhere, or the others are done): the
//   communicator is freed and MPI finalized as usual, and the handler reports the error;
// - they do not come within the grace (this rank failed alone, e.g. before the setup
//   agreement, and the others wait for it in a collective): freeing the communicator or
//   finalizing MPI would hang them, so it prints the rank and the last gradcomm::Error
//   thrown on this thread to stderr and calls MPI_Abort; the job ends within seconds.
// A rank that recovers from an exception must catch it inside the communicator's scope.
class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm comm, MpiCommunicatorOptions options = {});
  // Initializes MPI (MPI_THREAD_SERIALIZED or better) if nobody has, and finalizes it at
  // destruction if it did so; communicates over MPI_COMM_WORLD's duplicate.
  explicit MpiCommunicator(MpiCommunicatorOptions options = {});
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return Device::kCpu; }
  std::string describe() const override;
  MPI_Comm comm() const noexcept { return comm_; }

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
  bool accepts(Device device) const override;  // kCpu; kCuda too when built with CUDA

  // The cudaStream_t the staging copies of CUDA buffers are ordered on, and the device
  // of those buffers (-1: the calling thread's current device). Until it is called: the
  // legacy default stream and the device current at the first CUDA collective.
  // kUnsupported when built without CUDA.
  void set_cuda_stream(void* stream, int device = -1);

  // MPI_Comm_split / MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) of this communicator: the
  // new MpiCommunicator (a duplicate of the result) keeps these options and never
  // finalizes MPI. Under bench/netem/run --hosts H --ranks-per-host R, split_shared()
  // groups the R ranks of each emulated host.
  std::unique_ptr<Communicator> split(int color, int key) override;
  std::unique_ptr<Communicator> split_shared() override;

  class PooledWork;  // the Work handed out, recycled through WorkPool
  struct WorkPool;   // free works, and two-stage collectives waiting for their second stage
  struct Staging;    // pinned host buffers for CUDA buffers (mpi/device_staging_cuda.cpp)

 private:
  void init_from(MPI_Comm comm);
  std::unique_ptr<Communicator> adopt(MPI_Comm part);
  // The teardown barrier: true when every rank came within teardown_grace.
  bool meet_at_teardown() noexcept;
  void verify_same_size(const char* collective, std::size_t numel, int extra = 0);
  void release() noexcept;
  WorkHandle single_request(const char* what, std::size_t numel, MPI_Request request);
  // A collective on CUDA buffers: stage() copies the CUDA views among `inputs` to pinned
  // host buffers and points every CUDA view of both lists at its host copy; the host
  // collective then runs on those, and finish_staging() hands its work to the staged work,
  // which copies `outputs` back when it completes.
  static bool on_cuda(TensorView a, TensorView b = {}) {
    return a.device() == Device::kCuda || b.device() == Device::kCuda;
  }
  WorkHandle stage(std::initializer_list<TensorView*> inputs, std::initializer_list<TensorView*> outputs);
  static WorkHandle finish_staging(WorkHandle staged, WorkHandle host);

  MpiCommunicatorOptions options_;
  MPI_Op half_sum_ = MPI_OP_NULL;
  MPI_Op bfloat_sum_ = MPI_OP_NULL;
  MPI_Op half_max_ = MPI_OP_NULL;
  MPI_Op half_min_ = MPI_OP_NULL;
  MPI_Op bfloat_max_ = MPI_OP_NULL;
  MPI_Op bfloat_min_ = MPI_OP_NULL;

  MPI_Comm comm_ = MPI_COMM_NULL;
  MPI_Comm stage2_comm_ = MPI_COMM_NULL;
  MPI_Comm farewell_comm_ = MPI_COMM_NULL;  // the teardown barrier's
  std::shared_ptr<WorkPool> pool_;
  std::shared_ptr<Staging> staging_;  // made at the first CUDA collective or set_cuda_stream
  int rank_ = 0;
  int size_ = 1;
  bool finalize_on_destroy_ = false;
  int uncaught_at_construction_ = 0;
};

}  // namespace gradcomm
