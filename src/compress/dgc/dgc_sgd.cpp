#include <cmath>

#include "gradcomm/dgc.h"

namespace gradcomm {

DgcSgd::DgcSgd(DgcSgdOptions options) : options_(options) {
  set_lr(options.lr);
  GRADCOMM_CHECK_ARG(std::isfinite(options.weight_decay) && options.weight_decay >= 0.0f,
                     "DgcSgd: weight_decay must be >= 0, got ", options.weight_decay);
}

void DgcSgd::set_lr(float lr) {
  GRADCOMM_CHECK_ARG(std::isfinite(lr) && lr >= 0.0f, "DgcSgd: lr must be >= 0, got ", lr);
  options_.lr = lr;
}

void DgcSgd::step(std::span<float> param, std::span<const float> update) const {
  GRADCOMM_CHECK(param.size() == update.size(), ErrorCode::kSizeMismatch,
                 "DgcSgd::step: ", param.size(), " parameters and ", update.size(),
                 " update elements");
  // Weight decay is local (docs/algorithms/dgc.md): every rank holds the same parameters, so the
  // decay term is the same everywhere and needs no exchange, and keeping it out of the
  // compressor keeps it out of the sparsified velocity.
  const float lr = options_.lr, wd = options_.weight_decay;
  float* p = param.data();
  const float* u = update.data();
  if (wd == 0.0f) {
    for (std::size_t i = 0; i < param.size(); ++i) p[i] -= lr * u[i];
  } else {
    for (std::size_t i = 0; i < param.size(); ++i) p[i] -= lr * (u[i] + wd * p[i]);
  }
}

}  // namespace gradcomm
