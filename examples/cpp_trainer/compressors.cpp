// --compressor: one branch per compressor.
#include <stdexcept>

#include <gradcomm/dgc.h>

#include "training.h"

namespace trainer {

CompressorSetup make_quantize_or_lgreco_compressor(const Options& options, std::size_t steps_per_epoch);

CompressorSetup make_compressor(const Options& options, int world_size, std::size_t steps_per_epoch) {
  (void)world_size;
  (void)steps_per_epoch;
  CompressorSetup setup;
  if (options.compressor == "none") {
    setup.compressor = std::make_unique<gradcomm::DenseCompressor>(
        gradcomm::DenseOptions{options.fp16_wire ? gradcomm::DType::kFloat16 : gradcomm::DType::kFloat32});
    return setup;
  }
  if (options.compressor == "dgc") {
    // Epoch-driven warm-up (the trainer calls set_epoch); the paper's schedule, keeping only
    // the warm-up densities above the target. Momentum moves into the compressor.
    gradcomm::DgcOptions dgc;
    dgc.density = options.density;
    std::erase_if(dgc.warmup_densities, [&](double d) { return d <= options.density; });
    dgc.momentum = static_cast<float>(options.momentum);
    dgc.value_dtype = dgc.dense_dtype = options.fp16_wire ? gradcomm::DType::kFloat16 : gradcomm::DType::kFloat32;
    dgc.seed = options.seed;
    setup.compressor = std::make_unique<gradcomm::DgcCompressor>(dgc);
    setup.compressor_has_momentum = true;
    return setup;
  }
  if (options.compressor == "quant" || options.compressor == "lgreco-quant" ||
      options.compressor == "lgreco-dgc") {
    return make_quantize_or_lgreco_compressor(options, steps_per_epoch);  // compressors_lgreco.cpp
  }
  throw std::invalid_argument("unknown --compressor '" + options.compressor +
                              "' (expected none, dgc, quant, lgreco-dgc or lgreco-quant)");
}

}  // namespace trainer
