// DGC runners: "dgc" (uint32 indices with fp32 values, dense tensors in fp32) and
// "dgc-fp16" (fp16 values and fp16 dense tensors), through the Exchanger as a trainer uses
// them. No warm-up: the benchmark measures the target density (--density) from step 0.
//
// -c bound: after the first step of a fresh runner v = u = g, and each output element is
// the sum, over the ranks that selected it, of their g divided by p (1-D tensors: the exact
// average). The missing terms are ranks' values in [-1, 1) over p, so |out - avg| < 1:
// a loose but true statement; the exact contract is checked by tests/mpi/test_dgc.cpp.
#include "gradcomm/dgc.h"
#include "gradcomm_bench/runner.h"

namespace gradcomm::bench {

CheckBound dgc_bound() {
  return {1.0, 0.0, "DGC top-k: each element sums the ranks that sent it, / p: |out-avg| < 1"};
}

namespace {

std::unique_ptr<Runner> make_dgc(Communicator& comm, std::vector<LayerSpec> layers,
                                 const RunnerConfig& config, DType wire) {
  DgcOptions options;
  options.density = config.density;
  options.warmup_densities = {};
  options.value_dtype = wire;
  options.dense_dtype = wire;
  return make_exchanger_runner(comm, std::make_unique<DgcCompressor>(options), std::move(layers),
                               config, dgc_bound());
}

}  // namespace

std::unique_ptr<Runner> make_dgc_runner(Communicator& comm, std::vector<LayerSpec> layers,
                                        const RunnerConfig& config) {
  return make_dgc(comm, std::move(layers), config, DType::kFloat32);
}

std::unique_ptr<Runner> make_dgc_fp16_runner(Communicator& comm, std::vector<LayerSpec> layers,
                                             const RunnerConfig& config) {
  return make_dgc(comm, std::move(layers), config, DType::kFloat16);
}

}  // namespace gradcomm::bench
