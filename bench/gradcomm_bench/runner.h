// The plug-in point of gradcomm-bench: one Runner per compressor name.
//
// A runner exchanges a list of layers once per step over the benchmark's communicator
// and states how far its result may be from the dense average (the -c check). A
// compressor that plugs into the Exchanger needs only a factory calling
// make_exchanger_runner(); one that does more per step (L-GreCo's planner) or checks a
// bound that differs by layer or element derives from ExchangerRunner; one with its own
// collectives (two-phase 1-bit) implements Runner directly. Each runner lives in
// run_<name>.cpp and has one line in runners.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
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
  // --lgreco-period: L-GreCo re-plans every this many steps. parse_bench_options() fills
  // it from -c, -w and -n when the flag is absent (see lgreco_period_for()).
  std::int64_t lgreco_period = 0;
  std::size_t bucket_bytes = ExchangerOptions{}.bucket_bytes;  // --bucket-bytes
  ExchangeChoice exchange = ExchangeChoice::kCompressor;  // --exchange
  Hierarchy hierarchy = Hierarchy::kFlat;                  // --hierarchy
  int ranks_per_host = 0;                                  // --ranks-per-host (0: shared memory)
  HostCommunicators hosts;  // set by main() when --hierarchy is not flat
  bool print_plan = false;  // rank 0 prints the Exchanger's plan (model runs, auto choices)
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
  std::uint64_t sparse_allreduce = 0;  // slot lists through the sparse allreduce
};

// The bound of any fp32 sum of p benchmark values (in [-1, 1)) scaled by 1/p, whatever the
// summation order: the sum errs by at most (p-1) * u * p (u = 2^-24), so by (p-1) * u after
// the division; scaling by the rounded 1/p adds 2u relative.
CheckBound fp32_average_bound(int world_size);

// How many elements of `out`, whose first element is element `first` of the dense
// reference, are outside b.abs + b.rel * |avg| (a NaN is outside).
std::size_t count_outside(std::span<const float> out, std::uint64_t first, const DenseReference& dense,
                          const CheckBound& b);

// -c for the k-bit quantizer (run_quant.cpp), after the first step of a fresh runner:
// layer l was quantized with bits[l] bits per element in buckets of `bucket_size`
// (bits[l] == 0: allreduced in fp32). The bound of each element depends on every rank's
// range in its bucket, recomputed from the generator.
std::size_t count_wrong_quantized(std::span<const TensorView> outs, const DenseReference& dense,
                                  std::span<const int> bits, std::size_t bucket_size);
// The same bound as one statement, with the worst case of the benchmark's values as abs.
CheckBound quantized_bound(int bits, int world_size);

// DGC's bound after the first step, whatever the density (run_dgc.cpp).
CheckBound dgc_bound();

class Runner {
 public:
  virtual ~Runner() = default;

  // A comment line rank 0 prints after the row (what the timed steps did that the columns
  // do not show); empty: nothing.
  virtual std::string note() const { return {}; }

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
  // Of all bytes sent, those inside this rank's host (a hierarchical exchange); cumulative.
  virtual std::uint64_t bytes_sent_inside_host() const { return 0; }
  // What the Exchanger's plan predicts for one step, in seconds (0: nothing planned), and
  // what it chose, e.g. "hierarchical: 3 dense, 54 reduce_scatter" (empty: nothing planned).
  virtual double predicted_seconds() const { return 0.0; }
  virtual std::string plan_summary() const { return {}; }

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
  // About the bytes a rank holds per fp32 element of a row (the benchmark's gradient and
  // output, the compressor's state, the exchange buffers), measured on 2 ranks: a row
  // that cannot fit is refused before anything is allocated.
  double bytes_per_element;
};

// Every compressor name gradcomm-bench knows, built or not (runners.cpp).
std::span<const RunnerEntry> runner_table();

// The entry for `name`; throws gradcomm::Error (kInvalidArgument for an unknown name,
// kUnsupported for one not built yet) listing what is available.
const RunnerEntry& find_runner(const std::string& name);

// Exchanges through gradcomm::Exchanger with `compressor`, as a user's training loop does.
// The collective is the one carrying most payload bytes at step 0.
class ExchangerRunner : public Runner {
 public:
  ExchangerRunner(Communicator& comm, std::unique_ptr<Compressor> compressor, std::vector<LayerSpec> layers,
                  const RunnerConfig& config, CheckBound bound);

  Collective collective() const override { return collective_; }
  PayloadSplit payload_split() const override { return split_; }
  CheckBound bound() const override { return bound_; }
  void step(std::span<const TensorView> grads, std::span<const TensorView> outs) override;
  // The host communicators' traffic (a hierarchical exchange runs on them, not on comm).
  std::uint64_t bytes_sent_outside_communicator() const override;
  std::uint64_t bytes_sent_inside_host() const override;
  double predicted_seconds() const override { return exchanger_.plan().predicted_seconds; }
  std::string plan_summary() const override;

 protected:
  Exchanger& exchanger() noexcept { return exchanger_; }
  const Exchanger& exchanger() const noexcept { return exchanger_; }

 private:
  HostCommunicators hosts_;
  Exchanger exchanger_;
  CheckBound bound_;
  Collective collective_ = Collective::kAllreduce;
  PayloadSplit split_;
};

std::unique_ptr<Runner> make_exchanger_runner(Communicator& comm, std::unique_ptr<Compressor> compressor,
                                              std::vector<LayerSpec> layers, const RunnerConfig& config,
                                              CheckBound bound);

}  // namespace gradcomm::bench
