#include "gradcomm/exchanger.h"

#include <string>

#include "gradcomm/agreement.h"

namespace gradcomm {

Exchanger::Exchanger(Communicator& comm, std::shared_ptr<Compressor> compressor,
                     std::vector<LayerSpec> layers, ExchangerOptions options)
    : comm_(comm),
      engine_(std::move(compressor), std::move(layers), comm.size(), comm.rank(), options) {
  GRADCOMM_CHECK_ARG(comm_.device() == engine_.device(), "Exchanger: the layers are on ",
                     device_name(engine_.device()), " but ", comm_.describe(), " takes ",
                     device_name(comm_.device()),
                     " buffers (CUDA layers need a communicator for device buffers: "
                     "NcclCommunicator, or MpiCommunicator staging through host memory)");
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

void Exchanger::begin_step() { engine_.begin_step(step_); }

void Exchanger::set_stream(void* cuda_stream) { engine_.set_stream(cuda_stream); }

void Exchanger::issue_ready() {
  while (std::optional<CollectiveRequest> r = engine_.next_ready()) {
    // Device layers: the collective reads what the kernels on the step's stream wrote.
    if (engine_.device() != Device::kCpu) comm_.follow_stream(engine_.stream());
    works_[r->id] = r->collective == Collective::kAllreduce
                        ? comm_.allreduce(r->send, r->recv, ReduceOp::kSum)
                        : comm_.allgather(r->send, r->recv);
  }
}

void Exchanger::submit(std::size_t layer, TensorView grad, TensorView out) {
  engine_.submit(layer, grad, out);
  issue_ready();
  // Poke the collectives in flight so the transport progresses them while the caller
  // computes the next gradient.
  for (WorkHandle& work : works_) {
    if (work) work->test();
  }
}

const StepStats& Exchanger::finish_step() {
  engine_.check_all_submitted();
  issue_ready();
  try {
    for (std::size_t id = 0; id < engine_.collectives_this_step(); ++id) {
      // Device layers: the decode kernels wait for the collective on the stream (NCCL), or
      // the host waits first (host transports); host layers: the host waits.
      works_[id]->wait_stream(engine_.stream());
      works_[id].reset();
      engine_.complete(id);
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
