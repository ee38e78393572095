// EngineDriver: runs a StepEngine's collectives on a Communicator, in the agreed order:
// starts each as soon as the engine says it is ready, completes them in order, and keeps a
// sparse allreduce group going between submissions. The Exchanger drives its engine with
// one; a hierarchical exchange drives its engine of shards across hosts with another.
//
// Layers on a CUDA device: each collective is ordered after the kernels already queued on
// the engine's stream (Communicator::follow_stream), and the decodes after the collective
// (Work::wait_stream: an event on a device transport, a host wait on a host one).
#pragma once

#include <cstddef>
#include <functional>
#include <vector>

#include "gradcomm/communicator.h"
#include "gradcomm/step_engine.h"

namespace gradcomm::detail {

class EngineDriver {
 public:
  EngineDriver(StepEngine& engine, Communicator& comm) : engine_(engine), comm_(comm) {}

  // Called once per step, just before its first collective starts (the Exchanger checks
  // its layout agreement there).
  void set_before_first_collective(std::function<void()> hook) { before_first_ = std::move(hook); }

  // After engine.begin_step(): sizes the handles and forgets the last step's.
  void begin_step();
  // Starts every collective that is ready.
  void issue_ready();
  // Between submissions: pokes the collectives in flight so the transport progresses
  // them, and where a sparse allreduce phase waits for the one before, completes what is
  // done so that it can start. Abandons the step on an error.
  void poke();
  // Waits for and completes every collective of the step, starting each phase as it
  // becomes ready. Abandons the step on an error.
  void complete_all();

  StepEngine& engine() noexcept { return engine_; }
  Communicator& comm() noexcept { return comm_; }

 private:
  StepEngine& engine_;
  Communicator& comm_;
  std::vector<WorkHandle> works_;  // by collective id, this step; grow-only
  std::size_t completed_ = 0;      // collectives of this step completed, in id order
  std::function<void()> before_first_;
};

}  // namespace gradcomm::detail
