// The DGC family's error table from one sorted sample (docs/algorithms/lgreco.md).
#include <algorithm>
#include <cmath>
#include <functional>

#include "gradcomm/lgreco.h"
#include "kernels/shared/lgreco_math.h"

namespace gradcomm {

void lgreco_topk_errors(std::span<const float> x, std::span<const double> densities, std::size_t sample,
                        std::span<double> errors, std::vector<float>& workspace) {
  GRADCOMM_CHECK(errors.size() == densities.size(), ErrorCode::kSizeMismatch, "lgreco_topk_errors: ",
                 densities.size(), " densities, ", errors.size(), " error slots");
  GRADCOMM_CHECK_ARG(sample >= 1, "lgreco_topk_errors: sample must be positive");
  const std::size_t n = x.size();
  if (n == 0) {
    std::fill(errors.begin(), errors.end(), 0.0);
    return;
  }
  // A strided sample (every element when the layer is small). Deterministic: starting at 0,
  // so every rank samples the same positions of its own vector.
  const std::size_t s = std::min(n, sample);
  const std::size_t stride = n / s;
  if (workspace.size() < s) workspace.resize(s);
  double total = 0;
  for (std::size_t i = 0; i < n; ++i) total += static_cast<double>(x[i]) * x[i];
  for (std::size_t j = 0; j < s; ++j) workspace[j] = std::fabs(x[j * stride]);

  // Only the top of the sample is needed: partition it off, then sort just that part.
  double largest = 0;
  for (const double d : densities) largest = std::max(largest, d);
  const std::size_t top = kernels::lgreco::sample_top(s, largest);
  auto first = workspace.begin(), mid = first + static_cast<std::ptrdiff_t>(top),
       last = first + static_cast<std::ptrdiff_t>(s);
  std::nth_element(first, mid - 1, last, std::greater<>());
  std::sort(first, mid, std::greater<>());
  for (std::size_t c = 0; c < densities.size(); ++c) {
    errors[c] = kernels::lgreco::topk_error(total, workspace.data(), top, n, s, densities[c]);
  }
}

}  // namespace gradcomm
