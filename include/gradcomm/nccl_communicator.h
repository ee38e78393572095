// NcclCommunicator: collectives over NCCL on CUDA device buffers, on one CUDA stream.
#pragma once

#include <chrono>
#include <memory>

#include "gradcomm/communicator.h"

namespace gradcomm {

struct NcclCommunicatorOptions {
  int device = -1;            // CUDA device; -1: the current device
  void* stream = nullptr;     // cudaStream_t to enqueue on; nullptr: a stream of our own
  // wait() gives up after this long: the communicator is aborted (ncclCommAbort) and an
  // Error names the collective, so a dead peer ends the job instead of hanging it.
  std::chrono::milliseconds timeout{std::chrono::minutes(10)};
};

// Bootstrapped from any existing communicator (MPI, or another NCCL one): rank 0 makes
// the NCCL unique id and broadcasts it over `bootstrap`. Rank and size follow `bootstrap`.
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

  struct State;  // NCCL and CUDA handles (kept out of this header)

 private:
  WorkHandle record(const char* what);
  int rank_ = 0;
  int size_ = 1;
  std::shared_ptr<State> state_;
};

}  // namespace gradcomm
