#include "exchange/engine_driver.h"

#include "exchange/start_collective.h"

namespace gradcomm::detail {

void EngineDriver::begin_step() {
  // A sparse allreduce group adds collectives: the handles grow to the most a step used.
  if (works_.size() < engine_.collectives_this_step()) works_.resize(engine_.collectives_this_step());
  completed_ = 0;
}

void EngineDriver::issue_ready() {
  while (std::optional<CollectiveRequest> r = engine_.next_ready()) {
    if (r->id == 0 && before_first_) before_first_();
    // Device layers: the collective reads what the kernels on the step's stream wrote.
    if (engine_.device() != Device::kCpu) comm_.follow_stream(engine_.stream());
    works_[r->id] = start_collective(comm_, r->collective, r->send, r->recv, r->send_counts, r->recv_counts);
  }
}

void EngineDriver::poke() {
  for (WorkHandle& work : works_) {
    if (work) work->test();
  }
  try {
    while (engine_.waiting_for_phase() && works_[completed_] && works_[completed_]->test()) {
      works_[completed_].reset();
      engine_.complete(completed_++);
      issue_ready();
    }
  } catch (...) {
    engine_.abandon_step();
    throw;
  }
}

void EngineDriver::complete_all() {
  try {
    for (; completed_ < engine_.collectives_this_step(); ++completed_) {
      issue_ready();  // a sparse allreduce phase becomes ready when the one before completes
      // Device layers: the decode kernels wait for the collective on the stream (NCCL), or
      // the host waits first (host transports); host layers: the host waits. The step's
      // last collective is waited for on the host: a device transport's wait() gives up
      // after its timeout (a dead peer), where the stream synchronisation of finish_step
      // would hang; the collectives run in order, so that one wait bounds them all.
      const bool last = completed_ + 1 == engine_.collectives_this_step();
      if (last && engine_.device() != Device::kCpu) {
        works_[completed_]->wait();
      } else {
        works_[completed_]->wait_stream(engine_.stream());
      }
      works_[completed_].reset();
      engine_.complete(completed_);
    }
  } catch (...) {
    // The step is lost; the works still in flight are left to complete when released
    // (the caller aborts the communicator on such an error, which ends them).
    engine_.abandon_step();
    throw;
  }
}

}  // namespace gradcomm::detail
