// The plug-in point of gradcomm-bench: one Runner per compressor name.
//
// A runner exchanges a list of layers once per step over the benchmark's communicator
// and states how far its result may be from the dense average (the -c check). A
// compressor that plugs into the Exchanger needs only a factory calling
// make_exchanger_runner(); one with its own collectives (two-phase 1-bit) implements
// Runner directly. Each runner lives in run_<name>.cpp and has one line in runners.cpp.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "gradcomm/communicator.h"
#include "gradcomm/compressor.h"
#include "gradcomm/exchanger.h"
#include "gradcomm/layer.h"
#include "gradcomm_bench/bench_data.h"

namespace gradcomm::bench {

// Compressor settings taken from the command line; each runner validates the ones it uses.
struct RunnerConfig {
  double density = 0.001;  // --density: fraction of a layer's elements sent (dgc, lgreco-dgc)
  int bits = 4;            // --bits: bits per element (quant, lgreco-quant)
  std::size_t bucket_bytes = ExchangerOptions{}.bucket_bytes;  // --bucket-bytes
};

// The -c contract: every output element must satisfy |out - dense| <= abs + rel * |dense|,
// where dense is the exact average of all ranks' gradients (DenseReference: computed from
// the generator, not by any collective).
struct CheckBound {
  double abs = 0;
  double rel = 0;
  std::string statement;  // the bound as the compressor states it, printed in the header
};

// Payload bytes per rank per step by collective (at step 0): summable payloads go to the
// allreduce (dense tensors), opaque ones to the allgather (sparse top-k, quantized).
struct PayloadSplit {
  std::uint64_t allreduce = 0;
  std::uint64_t allgather = 0;
};

// The bound of any fp32 sum of p benchmark values (in [-1, 1)) scaled by 1/p, whatever the
// summation order: the sum errs by at most (p-1) * u * p (u = 2^-24), so by (p-1) * u after
// the division; scaling by the rounded 1/p adds 2u relative.
CheckBound fp32_average_bound(int world_size);

class Runner {
 public:
  virtual ~Runner() = default;

  // For the --model summary; all zero when the runner does not know.
  virtual PayloadSplit payload_split() const { return {}; }

  // The collective that carries most of the bytes: picks the busbw factor.
  virtual Collective collective() const = 0;
  virtual CheckBound bound() const = 0;

  // One exchange: reads `grads` (one per layer, fp32), writes the averaged update into
  // `outs`. Must not allocate after the first call.
  virtual void step(std::span<const TensorView> grads, std::span<const TensorView> outs) = 0;

  // Bytes this runner sent by means the communicator's traffic() does not count (its own
  // MPI calls), by the same algorithm model; cumulative. wire_bytes = traffic + this.
  virtual std::uint64_t bytes_sent_outside_communicator() const { return 0; }

  // -c: how many elements of this rank's `outs` (after the first step of a fresh runner)
  // are wrong against the exact average; dense(i) is element i of all layers concatenated
  // in layer order. The default applies bound() element by element; a runner whose stated
  // bound is not elementwise overrides this.
  virtual std::size_t count_wrong(std::span<const TensorView> outs, const DenseReference& dense) const;
};

using RunnerFactory = std::unique_ptr<Runner> (*)(Communicator& comm, std::vector<LayerSpec> layers,
                                                   const RunnerConfig& config);

struct RunnerEntry {
  const char* name;
  const char* summary;
  RunnerFactory make;  // nullptr: the compressor is not built into gradcomm yet
};

// Every compressor name gradcomm-bench knows, built or not (runners.cpp).
std::span<const RunnerEntry> runner_table();

// The entry for `name`; throws gradcomm::Error (kInvalidArgument for an unknown name,
// kUnsupported for one not built yet) listing what is available.
const RunnerEntry& find_runner(const std::string& name);

// A runner that exchanges through gradcomm::Exchanger with `compressor`, as a user's
// training loop does. The collective is the one carrying most payload bytes at step 0.
std::unique_ptr<Runner> make_exchanger_runner(Communicator& comm, std::unique_ptr<Compressor> compressor,
                                              std::vector<LayerSpec> layers, const RunnerConfig& config,
                                              CheckBound bound);

}  // namespace gradcomm::bench
