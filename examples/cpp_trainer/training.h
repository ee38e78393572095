// The pluggable parts of a training run: how gradients are compressed (a gradcomm
// Compressor run by an Exchanger) and how parameters are updated (an Optimizer, which
// may do its own communication, as 1-bit Adam does).
#pragma once

#include <gradcomm/gradcomm.h>

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "mlp.h"
#include "options.h"

namespace trainer {

// One parameter tensor with its (exchanged, or local) gradient.
struct Parameter {
  std::string name;
  std::vector<float>* value;
  std::vector<float>* grad;
  int ndim;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // True when the optimizer exchanges gradients itself (1-bit Adam): the trainer then
  // hands it local gradients and runs no Exchanger.
  virtual bool communicates() const { return false; }
  virtual void step(std::vector<Parameter>& params, std::int64_t step) = 0;
  // Bytes this rank sent in the last step, when communicates() is true.
  virtual std::uint64_t last_step_wire_bytes() const { return 0; }
  // This rank's state (momenta, moments, error feedback), for a checkpoint, and back:
  // load_state runs before the first step of a resumed run and throws
  // std::runtime_error on a blob that does not fit `params`.
  virtual std::vector<std::byte> save_state() const = 0;
  virtual void load_state(std::span<const std::byte> blob, std::vector<Parameter>& params) = 0;
};

struct CompressorSetup {
  std::unique_ptr<gradcomm::Compressor> compressor;
  // Momentum lives inside the compressor (DGC): the optimizer must not add its own.
  bool compressor_has_momentum = false;
  // Called after every step's exchange (re-planning, e.g. L-GreCo). May be empty.
  std::function<void(gradcomm::Communicator&, std::int64_t step)> after_step;
};

// For options that parse_options() accepted; the library may still refuse a combination
// (gradcomm::Error, kInvalidArgument), alike on every rank.
CompressorSetup make_compressor(const Options& options, std::size_t steps_per_epoch);
std::unique_ptr<Optimizer> make_optimizer(const Options& options, bool compressor_has_momentum,
                                          gradcomm::Communicator& comm, std::size_t total_steps);

}  // namespace trainer
