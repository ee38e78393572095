// The Work objects MpiCommunicator hands out, and the pool that recycles them and drives
// the rings of floating-point sums (ring.cpp).
//
// Work objects are pooled per communicator, so a step of many collectives allocates
// nothing once the pool has grown to the number in flight at a time.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "gradcomm/mpi_communicator.h"

namespace gradcomm {

class MpiCommunicator::PooledWork final : public Work {
 public:
  const char* what = "";
  std::size_t numel = 0;  // for messages
  MPI_Request request = MPI_REQUEST_NULL;  // a one-call collective
  // Ring allreduce.
  bool ring = false;
  int ring_step = 0;   // steps completed; 2(p-1) in all
  int ring_steps = 0;
  int tag = 0;
  MPI_Op op = MPI_OP_NULL;
  MPI_Request ring_requests[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
  std::vector<int> counts, displs;    // the chunks, by element; MPI reads them while in flight
  std::vector<int> send_counts, send_displs;  // alltoallv's send side, likewise
  std::vector<std::byte> incoming;    // one chunk received before it is added in
  MPI_Datatype type = MPI_DATATYPE_NULL;
  char* base = nullptr;
  std::size_t esize = 0;
  std::shared_ptr<WorkPool> pool;  // set while handed out, reset in the free list

  bool complete() const { return ring ? ring_step == ring_steps : request == MPI_REQUEST_NULL; }
  void wait() override;
  bool test() override;
  void release() noexcept override;
};

struct MpiCommunicator::WorkPool {
  int rank = 0;
  int size = 1;
  std::chrono::milliseconds timeout{0};  // MpiCommunicatorOptions::collective_timeout
  MPI_Comm stage2 = MPI_COMM_NULL;       // the rings' point-to-point traffic
  std::vector<PooledWork*> free;
  // Ring works keep their chunk buffer, grown to the largest chunk any ring has needed by
  // the time they come back, so a steady sequence of steps allocates nothing.
  std::vector<PooledWork*> free_rings;
  std::size_t largest_incoming = 0;
  std::vector<PooledWork*> rings;  // in flight, in issue order
  int next_tag = 0;

  ~WorkPool();

  static PooledWork* acquire(const std::shared_ptr<WorkPool>& self, const char* what, std::size_t numel,
                             bool for_ring = false);
  void forget(const PooledWork* w);

  // ring.cpp: the ring allreduce of a floating-point sum.
  // Starts the sum of `send` into `recv` (`count` elements of `type`, reduced with `op`).
  static WorkHandle start_ring(const std::shared_ptr<WorkPool>& self, TensorView send, TensorView recv,
                               int count, MPI_Datatype type, MPI_Op op);
  int chunk(int offset) const;
  // Posts the receive from the left and the send to the right of step w.ring_step.
  void post_ring_step(PooledWork& w);
  // Advances w as far as it goes without blocking.
  void progress(PooledWork& w);
  // Advances every ring in flight, in issue order, and forgets the finished ones.
  void progress_rings();
  // For the watchdog's message: whom w's current ring step waits for.
  std::string ring_waits_for(const PooledWork& w) const;
};

}  // namespace gradcomm
