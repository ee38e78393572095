// Communicator: the transport-neutral collective interface (MPI, NCCL).
// Nothing here knows about compression; compressors never see a transport.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "gradcomm/tensor.h"

namespace gradcomm {

enum class ReduceOp : std::uint8_t { kSum, kMax, kMin };
const char* reduce_op_name(ReduceOp op) noexcept;

// A pending collective. wait() blocks until it completes (throwing gradcomm::Error on a
// transport failure); test() returns whether it has completed without blocking.
class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;
  virtual bool test() = 0;
  // Called when the handle goes away, instead of delete: implementations may complete
  // the collective and recycle the object (no allocation per collective in the hot loop).
  virtual void release() noexcept { delete this; }
  // Orders work enqueued later on `cuda_stream` (a cudaStream_t) after this collective.
  // Stream-ordered transports (NCCL) make the stream wait on the device and return at
  // once; the default waits on the host, after which anything enqueued later is ordered.
  virtual void wait_stream(void* cuda_stream) {
    (void)cuda_stream;
    wait();
  }
};
struct WorkRelease {
  void operator()(Work* work) const noexcept { work->release(); }
};
using WorkHandle = std::unique_ptr<Work, WorkRelease>;

// Bytes this rank has handed to the transport, counted per collective by the algorithm
// the transport is assumed to run (ring allreduce: 2(p-1)/p * bytes; allgather: (p-1) *
// bytes per rank; alltoall: (p-1)/p * bytes). Used for the wire_bytes columns.
struct TrafficCounters {
  std::uint64_t bytes_sent = 0;
  std::uint64_t collectives = 0;
};

// All collectives are non-blocking and must be called in the same order on every rank.
// Buffers must stay alive and untouched until the returned work completes.
// Size rules (checked on the calling rank; a disagreement across ranks is a usage error
// that the layer agreement in Exchanger catches before the first step):
// - allreduce: send and recv have the same dtype and numel (they may alias: in place).
// - allgather: recv.numel() == size() * send.numel().
// - allgatherv: recv.numel() == sum(counts); counts.size() == size(); this rank's
//   count == send.numel().
// - alltoall: send.numel() == recv.numel(), divisible by size().
// - alltoallv: send_counts and recv_counts have size() entries; send holds the parts for
//   ranks 0..p-1 back to back (sum(send_counts) elements), recv receives the parts from
//   ranks 0..p-1 back to back (sum(recv_counts)); recv_counts[r] on this rank must equal
//   send_counts[this rank] on rank r (a mismatch is a usage error, like a size mismatch).
// - broadcast: the same numel on every rank.
class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual Device device() const = 0;  // where the buffers it takes live
  virtual std::string describe() const = 0;

  virtual WorkHandle allreduce(TensorView send, TensorView recv, ReduceOp op) = 0;
  virtual WorkHandle allgather(TensorView send, TensorView recv) = 0;
  virtual WorkHandle allgatherv(TensorView send, TensorView recv,
                                std::span<const std::size_t> counts) = 0;
  virtual WorkHandle alltoall(TensorView send, TensorView recv) = 0;
  virtual WorkHandle alltoallv(TensorView send, std::span<const std::size_t> send_counts,
                               TensorView recv, std::span<const std::size_t> recv_counts) = 0;
  virtual WorkHandle broadcast(TensorView buffer, int root) = 0;
  virtual WorkHandle barrier() = 0;

  // Collectives issued from now on read their buffers only after the work already enqueued
  // on `cuda_stream` (a cudaStream_t): the Exchanger calls it before each collective of a
  // step whose kernels run on that stream. Host transports need nothing (the default);
  // NCCL makes its stream wait on an event; a transport that copies device buffers to the
  // host orders its copies after the stream.
  virtual void follow_stream(void* cuda_stream) { (void)cuda_stream; }

  // Ends every pending and future collective with an Error instead of a hang
  // (NCCL: ncclCommAbort; MPI: MPI_Abort of the duplicated communicator's job).
  virtual void abort(const std::string& reason) = 0;

  // Whether collectives take buffers on `device`: device() always; MpiCommunicator built
  // with CUDA also takes CUDA buffers (staged through pinned host memory).
  virtual bool accepts(Device device) const { return device == this->device(); }

  // Hierarchies (the ranks of one host; the ranks with the same local rank across hosts).
  // Both are collective over this communicator, issued in the same order as its other
  // collectives on every rank, and block until the new communicator exists.
  // split: the ranks passing the same color >= 0 form one new communicator, ranked by
  // `key` (ties by rank here); a rank passing kNoColor takes part and gets nullptr.
  // split_shared: the ranks that share this rank's host (its memory), ranked as here.
  // The new communicator is independent: it outlives this one and has its own traffic.
  // Communicators that cannot split throw kUnsupported.
  static constexpr int kNoColor = -1;
  virtual std::unique_ptr<Communicator> split(int color, int key);
  virtual std::unique_ptr<Communicator> split_shared();

  const TrafficCounters& traffic() const noexcept { return traffic_; }
  void reset_traffic() noexcept { traffic_ = {}; }

  // Blocking conveniences.
  void allreduce_inplace(TensorView buffer, ReduceOp op) { allreduce(buffer, buffer, op)->wait(); }

 protected:
  void count_traffic(std::uint64_t bytes) noexcept {
    traffic_.bytes_sent += bytes;
    traffic_.collectives += 1;
  }

  // Validates the rules above; `what` names the collective in the message.
  void check_allreduce(TensorView send, TensorView recv) const;
  void check_allgather(TensorView send, TensorView recv) const;
  void check_allgatherv(TensorView send, TensorView recv,
                        std::span<const std::size_t> counts) const;
  void check_alltoall(TensorView send, TensorView recv) const;
  void check_alltoallv(TensorView send, std::span<const std::size_t> send_counts, TensorView recv,
                       std::span<const std::size_t> recv_counts) const;
  void check_broadcast(TensorView buffer, int root) const;

 private:
  TrafficCounters traffic_;
};

// Traffic each collective adds to bytes_sent, by the algorithm noted above.
std::uint64_t allreduce_wire_bytes(std::uint64_t bytes, int world_size);
std::uint64_t allgather_wire_bytes(std::uint64_t bytes_per_rank, int world_size);
std::uint64_t alltoall_wire_bytes(std::uint64_t total_bytes, int world_size);
// alltoallv: the bytes of the parts this rank sends to other ranks (its own part stays).
std::uint64_t alltoallv_wire_bytes(std::span<const std::size_t> send_counts, std::size_t element_bytes,
                                   int rank);

}  // namespace gradcomm
