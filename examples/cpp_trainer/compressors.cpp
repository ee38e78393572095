// --compressor: one branch per compressor (L-GreCo's in compressors_lgreco.cpp).
#include "compressors.h"

#include <stdexcept>

namespace trainer {

gradcomm::DgcOptions dgc_options(const Options& options) {
  gradcomm::DgcOptions dgc;
  dgc.density = options.density;
  dgc.momentum = static_cast<float>(options.momentum);
  dgc.value_dtype = dgc.dense_dtype = options.fp16_wire ? gradcomm::DType::kFloat16 : gradcomm::DType::kFloat32;
  dgc.seed = options.seed;
  return dgc;
}

gradcomm::QuantizeOptions quantize_options(const Options& options) {
  gradcomm::QuantizeOptions quantize;
  quantize.bits = options.bits;
  quantize.seed = options.seed;
  return quantize;
}

CompressorSetup make_compressor(const Options& options, std::size_t steps_per_epoch) {
  CompressorSetup setup;
  if (options.compressor == "none") {
    setup.compressor = std::make_unique<gradcomm::DenseCompressor>(
        gradcomm::DenseOptions{options.fp16_wire ? gradcomm::DType::kFloat16 : gradcomm::DType::kFloat32});
    return setup;
  }
  if (options.compressor == "dgc") {
    setup.compressor = std::make_unique<gradcomm::DgcCompressor>(dgc_options(options));
    setup.compressor_has_momentum = true;  // momentum moves into the compressor
    return setup;
  }
  if (options.compressor == "quant") {
    setup.compressor = std::make_unique<gradcomm::QuantizeCompressor>(quantize_options(options));
    return setup;
  }
  if (options.compressor == "lgreco-quant" || options.compressor == "lgreco-dgc") {
    return make_lgreco_compressor(options, steps_per_epoch);
  }
  // parse_options() refused other names.
  throw std::logic_error("make_compressor: unknown --compressor '" + options.compressor + "'");
}

}  // namespace trainer
