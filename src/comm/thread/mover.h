// How a ThreadCommunicator group moves and combines bytes once every rank has called a
// collective: memmove on the host, or copies and a reduction kernel on CUDA streams.
#pragma once

#include <cstddef>
#include <memory>
#include <span>

#include "gradcomm/communicator.h"

namespace gradcomm::thread_comm {

struct Slot;

class Mover {
 public:
  virtual ~Mover() = default;
  virtual void* stream(int rank) const {
    (void)rank;
    return nullptr;
  }
  virtual int cuda_device() const { return -1; }  // CUDA: the device every rank uses
  // A slot object is new or recycled: give it what arrived() and end() need (events).
  virtual void prepare(Slot& slot) { (void)slot; }
  virtual void forget(Slot& slot) noexcept { (void)slot; }
  // Called by `rank`'s thread when it calls the collective: CUDA records there what the
  // collective must come after (the work queued on the rank's stream so far).
  virtual void arrived(Slot& slot, int rank) { (void)slot, (void)rank; }
  // Every rank has called it: from here on any rank's buffers may be read.
  virtual void begin(Slot& slot) { (void)slot; }
  // Writes into `to`'s buffer.
  virtual void copy(Slot& slot, int to, void* dst, const void* src, std::size_t bytes) = 0;
  // acc = combine(acc, src), element-wise, where `to`'s buffers are written.
  virtual void combine(Slot& slot, int to, DType dtype, ReduceOp op, void* acc, const void* src,
                       std::size_t n) = 0;
  // What was written for `from` so far comes before what is written next for `to`.
  virtual void handoff(Slot& slot, int from, int to) { (void)slot, (void)from, (void)to; }
  // Every write is issued: a rank is complete once every rank's writes are done (its send
  // buffer is then no longer read by anyone).
  virtual void end(Slot& slot) { (void)slot; }
  // Whether `rank`'s part is complete (after end()); settle() blocks until it is.
  virtual bool complete(Slot& slot, int rank) {
    (void)slot, (void)rank;
    return true;
  }
  virtual void settle(Slot& slot, int rank) noexcept { (void)slot, (void)rank; }
};

std::unique_ptr<Mover> make_host_mover();
#if defined(GRADCOMM_HAVE_CUDA)
// `streams`: one per rank, or empty (streams of its own). Throws kCuda on a failed call.
std::unique_ptr<Mover> make_cuda_mover(int size, int device, std::span<void* const> streams);
#endif

}  // namespace gradcomm::thread_comm
