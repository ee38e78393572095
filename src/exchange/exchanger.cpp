#include "gradcomm/exchanger.h"

#include <string>

#include "exchange/step_memory.h"
#include "gradcomm/agreement.h"

namespace gradcomm {

// The words [lo, hi, ~lo, ~hi] of this rank's layout fingerprint, maxed over the ranks:
// the first two give the largest fingerprint, the last two the complement of the smallest,
// so every rank learns from one collective whether all of them agree.
struct Exchanger::LayoutAgreement {
  detail::HostStaging host;
  detail::StepBuffer device;  // device layers: the collective's buffer
  WorkHandle work;
  std::uint64_t mine = 0;
  std::uint32_t* words() const { return reinterpret_cast<std::uint32_t*>(host.at(0)); }
};

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
  if (options.agree_every_step) {
    agreement_ = std::make_unique<LayoutAgreement>();
    agreement_->host = detail::HostStaging(engine_.device(), 4 * sizeof(std::uint32_t));
    if (engine_.device() != Device::kCpu) {
      agreement_->device =
          detail::StepBuffer(engine_.device(), engine_.device_index(), 4 * sizeof(std::uint32_t));
    }
  }
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
  if (agreement_) start_layout_agreement();
}

void Exchanger::start_layout_agreement() {
  LayoutAgreement& a = *agreement_;
  a.mine = engine_.layout_fingerprint();
  std::uint32_t* w = a.words();
  w[0] = static_cast<std::uint32_t>(a.mine);
  w[1] = static_cast<std::uint32_t>(a.mine >> 32);
  w[2] = ~w[0];
  w[3] = ~w[1];
  TensorView words(w, 4, DType::kUInt32);
  if (engine_.device() != Device::kCpu) {
    const detail::StepMover mover{engine_.device(), engine_.stream()};
    mover.copy(a.device.at(0), w, 4 * sizeof(std::uint32_t));
    comm_.follow_stream(engine_.stream());
    words = TensorView(a.device.at(0), 4, DType::kUInt32, engine_.device(), engine_.device_index());
  }
  a.work = comm_.allreduce(words, words, ReduceOp::kMax);
}

void Exchanger::check_layout_agreement() {
  LayoutAgreement& a = *agreement_;
  if (!a.work) return;
  a.work->wait_stream(engine_.stream());
  a.work.reset();
  if (engine_.device() != Device::kCpu) {
    const detail::StepMover mover{engine_.device(), engine_.stream()};
    mover.copy(a.words(), a.device.at(0), 4 * sizeof(std::uint32_t));
    mover.synchronize();
  }
  const std::uint32_t* w = a.words();
  const std::uint64_t most = (std::uint64_t{w[1]} << 32) | w[0];
  const std::uint64_t least = (std::uint64_t{~w[3]} << 32) | ~w[2];
  if (most == least) return;
  engine_.abandon_step();
  // Rare and fatal: name the ranks' steps where the transport takes host buffers.
  std::string steps;
  if (engine_.device() == Device::kCpu) {
    const auto p = static_cast<std::size_t>(comm_.size());
    std::vector<std::int64_t> all(p);
    std::int64_t mine = step_;
    comm_.allgather(TensorView(&mine, 2, DType::kUInt32), TensorView(all.data(), 2 * p, DType::kUInt32))->wait();
    for (std::size_t r = 0; r < p; ++r) steps += (r ? ", " : "") + std::to_string(all[r]);
    steps = "; the ranks are at steps [" + steps + "]";
  }
  GRADCOMM_THROW(ErrorCode::kSizeMismatch, "Exchanger on rank ", comm_.rank(), ": the ranks laid step ",
                 step_, " out differently: their schedules disagree (set_epoch, load_state_dict or "
                 "the step counter moved on some ranks only; every rank must advance them alike)",
                 steps);
}

void Exchanger::set_stream(void* cuda_stream) { engine_.set_stream(cuda_stream); }

void Exchanger::issue_ready() {
  while (std::optional<CollectiveRequest> r = engine_.next_ready()) {
    if (r->id == 0 && agreement_) check_layout_agreement();
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
