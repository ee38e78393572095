#include "gradcomm/exchanger.h"

#include <string>

#include "exchange/start_collective.h"
#include "gradcomm/agreement.h"

namespace gradcomm {

Exchanger::Exchanger(Communicator& comm, std::shared_ptr<Compressor> compressor,
                     std::vector<LayerSpec> layers, ExchangerOptions options)
    : comm_(comm),
      engine_(std::move(compressor), std::move(layers), comm.size(), comm.rank(), options) {
  GRADCOMM_CHECK_ARG(comm_.device() == Device::kCpu, "Exchanger: ", comm_.describe(),
                     " takes device buffers; this Exchanger stages payloads on the host");
  check_agreement(comm_, engine_.layers(), engine_.settings_fingerprint(),
                  "Exchanger setup (" + engine_.compressor().name() + ")");
  works_.resize(engine_.layers().size());
}

Exchanger::~Exchanger() = default;

void Exchanger::restore_step(std::int64_t step) {
  GRADCOMM_CHECK(!engine_.in_step(), ErrorCode::kInvalidArgument, "Exchanger::restore_step(",
                 step, ") on rank ", comm_.rank(), " inside step ", step_,
                 ": finish the step first");
  GRADCOMM_CHECK_ARG(step >= 0, "Exchanger::restore_step: step ", step, " < 0");
  step_ = step;
}

void Exchanger::begin_step() {
  engine_.begin_step(step_);
  // A sparse allreduce group adds collectives: the handles grow to the most a step used.
  if (works_.size() < engine_.collectives_this_step()) works_.resize(engine_.collectives_this_step());
  completed_ = 0;
}

void Exchanger::issue_ready() {
  while (std::optional<CollectiveRequest> r = engine_.next_ready()) {
    works_[r->id] = detail::start_collective(comm_, r->collective, r->send, r->recv, r->send_counts, r->recv_counts);
  }
}

void Exchanger::submit(std::size_t layer, TensorView grad, TensorView out) {
  engine_.submit(layer, grad, out);
  issue_ready();
  // Poke the collectives in flight so the transport progresses them while the caller
  // computes the next gradient. Where a sparse allreduce group waits for its last phase,
  // complete what is done, in order, so that its next phase starts now rather than at
  // finish_step.
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

const StepStats& Exchanger::finish_step() {
  engine_.check_all_submitted();
  issue_ready();
  try {
    for (; completed_ < engine_.collectives_this_step(); ++completed_) {
      issue_ready();  // a sparse allreduce phase becomes ready when the one before completes
      works_[completed_]->wait();
      works_[completed_].reset();
      engine_.complete(completed_);
    }
  } catch (...) {
    // The step is lost; the works still in flight are left to complete when released
    // (the caller aborts the communicator on such an error, which ends them).
    engine_.abandon_step();
    throw;
  }
  step_ += 1;
  return engine_.finish_step();
}

const StepStats& Exchanger::exchange(std::span<const TensorView> grads,
                                     std::span<const TensorView> outs) {
  const std::size_t n = engine_.layers().size();
  GRADCOMM_CHECK(grads.size() == n && outs.size() == n, ErrorCode::kSizeMismatch,
                 "Exchanger::exchange: ", grads.size(), " gradients and ", outs.size(),
                 " outputs for ", n, " layers");
  begin_step();
  for (std::size_t pos = 0; pos < n; ++pos) {
    const std::size_t layer = n - 1 - pos;
    submit(layer, grads[layer], outs[layer]);
  }
  return finish_step();
}

}  // namespace gradcomm
