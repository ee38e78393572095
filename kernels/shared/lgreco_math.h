// L-GreCo's DGC-family error estimate (docs/algorithms/lgreco.md), shared by the CPU
// profile (src/lgreco/lgreco_topk_errors.cpp) and the CUDA one
// (kernels/cuda/lgreco_kernels.cu): the same formula on the same sorted sample gives the
// same error (the total sum of squares is summed in another order on the GPU).
#pragma once

#include <cmath>
#include <cstddef>

#include "core/host_device.h"

namespace gradcomm::kernels::lgreco {

GRADCOMM_HOST_DEVICE_INLINE double ceil_of(double x) {
#if defined(__CUDA_ARCH__)
  return ::ceil(x);
#else
  return std::ceil(x);
#endif
}

GRADCOMM_HOST_DEVICE_INLINE double sqrt_of(double x) {
#if defined(__CUDA_ARCH__)
  return ::sqrt(x);
#else
  return std::sqrt(x);
#endif
}

// How many of the sorted sample the estimates need: the largest density's share, plus 2.
inline std::size_t sample_top(std::size_t samples, double largest_density) {
  const auto top = static_cast<std::size_t>(std::ceil(largest_density * static_cast<double>(samples))) + 2;
  return top < samples ? top : samples;
}

// ||x - topk_k(x)|| for k = ceil(density * n) (at least 1), from `total` = sum x^2 and
// `top` = the largest |x| of a strided sample of `samples` elements, descending:
//   err^2 = total - (n / samples) * (sum of the squares of the top k*samples/n sample
//   elements), interpolating the last, fractional, one.
GRADCOMM_HOST_DEVICE_INLINE double topk_error(double total, const float* top_desc, std::size_t top, std::size_t n,
                                              std::size_t samples, double density) {
  const double scale = static_cast<double>(n) / static_cast<double>(samples);
  double k = ceil_of(density * static_cast<double>(n));
  k = k < 1.0 ? 1.0 : (k > static_cast<double>(n) ? static_cast<double>(n) : k);
  const double wanted = k / scale;
  const double ks = wanted < static_cast<double>(top) ? wanted : static_cast<double>(top);
  const auto whole = static_cast<std::size_t>(ks);
  double sent = 0;
  for (std::size_t j = 0; j < whole; ++j) sent += static_cast<double>(top_desc[j]) * top_desc[j];
  if (whole < top) sent += (ks - static_cast<double>(whole)) * top_desc[whole] * top_desc[whole];
  const double left = total - scale * sent;
  return sqrt_of(left > 0.0 ? left : 0.0);
}

}  // namespace gradcomm::kernels::lgreco
