#include "kernels/cpu/dense_kernels.h"

#include <cmath>

#include "core/float16.h"

namespace gradcomm::kernels {

// Branch-free form so the compiler vectorizes: (x - x) is 0 for finite x, NaN otherwise.
static inline bool is_finite(float x) { return (x - x) == 0.0f; }

std::size_t copy_zeroing_nonfinite(const float* in, float* out, std::size_t n) {
  std::size_t bad = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const float x = in[i];
    const bool ok = is_finite(x);
    bad += !ok;
    out[i] = ok ? x : 0.0f;
  }
  return bad;
}

std::size_t to_half_zeroing_nonfinite(const float* in, std::uint16_t* out, std::size_t n) {
  std::size_t bad = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const float x = in[i];
    const bool ok = is_finite(x);
    bad += !ok;
    out[i] = float_to_half(ok ? x : 0.0f);
  }
  return bad;
}

void scale(const float* in, float factor, float* out, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) out[i] = in[i] * factor;
}

void half_to_float_scaled(const std::uint16_t* in, float factor, float* out, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) out[i] = half_to_float(in[i]) * factor;
}

std::size_t count_nonfinite(const float* in, std::size_t n) {
  std::size_t bad = 0;
  for (std::size_t i = 0; i < n; ++i) bad += !is_finite(in[i]);
  return bad;
}

}  // namespace gradcomm::kernels
