// --optimizer onebit-adam: gradcomm::OneBitAdam does its own communication (dense
// allreduce of gradients during the warm-up, then one fused 1-bit allreduce of the
// momenta per step), so the trainer hands it local gradients and runs no Exchanger.
#include <gradcomm/onebit.h>

#include <cmath>
#include <stdexcept>

#include "launch/settings.h"
#include "training.h"

namespace trainer {
namespace {

class OneBitAdamOptimizer final : public Optimizer {
 public:
  OneBitAdamOptimizer(gradcomm::Communicator& comm, gradcomm::OneBitAdamOptions options)
      : comm_(comm), options_(options) {}

  bool communicates() const override { return true; }

  void step(std::vector<Parameter>& params, std::int64_t) override {
    build(params);
    const std::uint64_t before = comm_.traffic().bytes_sent;
    adam_->step(grads_);
    last_bytes_ = comm_.traffic().bytes_sent - before;
  }

  std::uint64_t last_step_wire_bytes() const override { return last_bytes_; }

  // OneBitAdam's own state: its step (the freeze follows it), m, the frozen v and this
  // rank's worker and server errors.
  std::vector<std::byte> save_state() const override { return adam_ ? adam_->save_state() : std::vector<std::byte>{}; }
  void load_state(std::span<const std::byte> blob, std::vector<Parameter>& params) override {
    build(params);
    if (!blob.empty()) adam_->load_state(blob);
  }

 private:
  // The parameters are known from the first step (or a resume) on; built once.
  void build(std::vector<Parameter>& params) {
    if (adam_) return;
    std::vector<gradcomm::OneBitParam> list;
    for (Parameter& p : params) {
      list.push_back({p.name, gradcomm::TensorView::of(std::span<float>(*p.value)), true, {}});
      grads_.push_back(gradcomm::TensorView::of(std::span<float>(*p.grad)));
    }
    adam_ = std::make_unique<gradcomm::OneBitAdam>(comm_, std::move(list), options_);
  }

  gradcomm::Communicator& comm_;
  gradcomm::OneBitAdamOptions options_;
  std::unique_ptr<gradcomm::OneBitAdam> adam_;
  std::vector<gradcomm::TensorView> grads_;
  std::uint64_t last_bytes_ = 0;
};

}  // namespace

std::unique_ptr<Optimizer> make_onebit_adam(const Options& options, gradcomm::Communicator& comm,
                                            std::size_t total_steps) {
  // parse_options() checked the combination and the ranges; what is left depends on the
  // number of steps.
  gradcomm::OneBitAdamOptions o;
  o.lr = static_cast<float>(options.lr.value_or(2e-3));
  o.weight_decay = static_cast<float>(options.weight_decay);
  o.freeze_step = static_cast<std::int64_t>(std::llround(options.freeze_fraction * static_cast<double>(total_steps)));
  if (o.freeze_step < 1) {
    throw std::invalid_argument("--freeze-fraction " + launch::shortest(options.freeze_fraction) + " of " +
                                std::to_string(total_steps) +
                                " steps leaves 1-bit Adam no warm-up step (its variance would be 0); raise it");
  }
  // As the trainer's --optimizer adam, so the warm-up is the same update.
  o.bias_correction = true;
  o.precondition = options.onebit_precondition;
  o.eps = static_cast<float>(options.onebit_eps);
  return std::make_unique<OneBitAdamOptimizer>(comm, o);
}

}  // namespace trainer
