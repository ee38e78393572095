// --optimizer: SGD (with momentum unless the compressor carries it) and Adam, applied to
// the exchanged gradients; weight decay is local and never compressed.
#include <cmath>
#include <stdexcept>

#include "checkpoints.h"
#include "training.h"

namespace trainer {
namespace {

class Sgd final : public Optimizer {
 public:
  Sgd(double lr, double momentum, double weight_decay)
      : lr_(static_cast<float>(lr)), momentum_(static_cast<float>(momentum)), wd_(static_cast<float>(weight_decay)) {}
  void step(std::vector<Parameter>& params, std::int64_t) override {
    if (buffers_.empty()) buffers_.resize(params.size());
    for (std::size_t k = 0; k < params.size(); ++k) {
      std::vector<float>& p = *params[k].value;
      const std::vector<float>& g = *params[k].grad;
      std::vector<float>& buf = buffers_[k];
      if (buf.empty()) buf.assign(p.size(), 0.0f);
      for (std::size_t i = 0; i < p.size(); ++i) {
        const float d = g[i] + wd_ * p[i];
        buf[i] = momentum_ * buf[i] + d;
        p[i] -= lr_ * buf[i];
      }
    }
  }
  std::vector<std::byte> save_state() const override {
    StateWriter w;
    save_tensors(w, buffers_);
    return w.bytes();
  }
  void load_state(std::span<const std::byte> blob, std::vector<Parameter>& params) override {
    StateReader r(blob, "sgd state");
    load_tensors(r, buffers_, params, "momentum");
    r.finish();
  }

 private:
  float lr_, momentum_, wd_;
  std::vector<std::vector<float>> buffers_;
};

class Adam final : public Optimizer {
 public:
  Adam(double lr, double weight_decay) : lr_(static_cast<float>(lr)), wd_(static_cast<float>(weight_decay)) {}
  void step(std::vector<Parameter>& params, std::int64_t step) override {
    if (m_.empty()) {
      m_.resize(params.size());
      v_.resize(params.size());
    }
    const float t = static_cast<float>(step + 1);
    const float c1 = 1.0f - std::pow(b1_, t), c2 = 1.0f - std::pow(b2_, t);
    for (std::size_t k = 0; k < params.size(); ++k) {
      std::vector<float>& p = *params[k].value;
      const std::vector<float>& g = *params[k].grad;
      if (m_[k].empty()) {
        m_[k].assign(p.size(), 0.0f);
        v_[k].assign(p.size(), 0.0f);
      }
      for (std::size_t i = 0; i < p.size(); ++i) {
        m_[k][i] = b1_ * m_[k][i] + (1 - b1_) * g[i];
        v_[k][i] = b2_ * v_[k][i] + (1 - b2_) * g[i] * g[i];
        const float update = (m_[k][i] / c1) / (std::sqrt(v_[k][i] / c2) + eps_);
        p[i] -= lr_ * (update + wd_ * p[i]);
      }
    }
  }
  // No step count: the bias correction follows the trainer's step, which the checkpoint keeps.
  std::vector<std::byte> save_state() const override {
    StateWriter w;
    save_tensors(w, m_);
    save_tensors(w, v_);
    return w.bytes();
  }
  void load_state(std::span<const std::byte> blob, std::vector<Parameter>& params) override {
    StateReader r(blob, "adam state");
    load_tensors(r, m_, params, "m");
    load_tensors(r, v_, params, "v");
    r.finish();
  }

 private:
  float lr_, wd_, b1_ = 0.9f, b2_ = 0.999f, eps_ = 1e-8f;
  std::vector<std::vector<float>> m_, v_;
};

}  // namespace

std::unique_ptr<Optimizer> make_onebit_adam(const Options& options, gradcomm::Communicator& comm,
                                            std::size_t total_steps);  // optimizer_onebit.cpp

std::unique_ptr<Optimizer> make_optimizer(const Options& options, bool compressor_has_momentum,
                                          gradcomm::Communicator& comm, std::size_t total_steps) {
  if (options.optimizer == "sgd") {
    return std::make_unique<Sgd>(options.lr.value_or(0.05), compressor_has_momentum ? 0.0 : options.momentum,
                                 options.weight_decay);
  }
  // parse_options() refused adam after a compressor that carries momentum.
  if (options.optimizer == "adam") return std::make_unique<Adam>(options.lr.value_or(2e-3), options.weight_decay);
  if (options.optimizer == "onebit-adam") return make_onebit_adam(options, comm, total_steps);
  throw std::logic_error("make_optimizer: unknown --optimizer '" + options.optimizer + "'");
}

}  // namespace trainer
