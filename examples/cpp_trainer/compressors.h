// The compressor options the trainer builds from its command line, shared by the plain
// compressors (compressors.cpp) and L-GreCo over them (compressors_lgreco.cpp).
#pragma once

#include <gradcomm/dgc.h>
#include <gradcomm/quantize.h>

#include <cstddef>

#include "training.h"

namespace trainer {

// The user's words, passed through: --density, --momentum, --fp16-wire, --seed and the
// paper's warm-up, which the compressor applies above the target (dgc.h). Run with
// set_epoch() (steps_per_epoch 0): the trainer calls it at every epoch.
gradcomm::DgcOptions dgc_options(const Options& options);
gradcomm::QuantizeOptions quantize_options(const Options& options);

// --compressor lgreco-quant | lgreco-dgc.
CompressorSetup make_lgreco_compressor(const Options& options, std::size_t steps_per_epoch);

}  // namespace trainer
