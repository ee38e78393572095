// Dense runners: the fp32 baseline ("none") and fp16 on the wire ("fp16"), both through the
// Exchanger with a DenseCompressor, which is what a user of gradcomm gets for "none".
//
// Their -c bounds assume the benchmark's gradients (values in [-1, 1), see bench_data.h).
#include <cmath>

#include "gradcomm/dense.h"
#include "gradcomm_bench/runner.h"

namespace gradcomm::bench {

std::unique_ptr<Runner> make_none_runner(Communicator& comm, std::vector<LayerSpec> layers,
                                         const RunnerConfig& config) {
  return make_exchanger_runner(comm, std::make_unique<DenseCompressor>(), std::move(layers), config,
                               fp32_average_bound(comm.size()));
}

std::unique_ptr<Runner> make_fp16_runner(Communicator& comm, std::vector<LayerSpec> layers,
                                         const RunnerConfig& config) {
  // Each input rounds to fp16 (<= 2^-12 for |x| < 1) and each of the p-1 fp16 partial sums
  // (|s| <= p) rounds by <= p * 2^-11; after dividing by p: 2^-12 + (p-1) * 2^-11 < p * 2^-11.
  const double p = comm.size();
  CheckBound bound{p * std::ldexp(1.0, -11), std::ldexp(1.0, -22),
                   "fp16 wire: |out-avg| <= p*2^-11 + 2^-22*|avg|"};
  return make_exchanger_runner(comm, std::make_unique<DenseCompressor>(DenseOptions{DType::kFloat16}),
                               std::move(layers), config, std::move(bound));
}

}  // namespace gradcomm::bench
