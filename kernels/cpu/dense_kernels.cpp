#include "kernels/cpu/dense_kernels.h"

#include "core/float16.h"
#include "kernels/shared/float_ops.h"

namespace gradcomm::kernels {

std::size_t copy_zeroing_nonfinite(const float* in, float* out, std::size_t n) {
  std::size_t bad = 0;
  for (std::size_t i = 0; i < n; ++i) {
    bad += !is_finite(in[i]);
    out[i] = finite_or_zero(in[i]);
  }
  return bad;
}

std::size_t to_half_zeroing_nonfinite(const float* in, std::uint16_t* out, std::size_t n) {
  std::size_t bad = 0;
  for (std::size_t i = 0; i < n; ++i) {
    bad += !is_finite(in[i]);
    out[i] = float_to_half(finite_or_zero(in[i]));
  }
  return bad;
}

void scale(const float* in, float factor, float* out, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) out[i] = fmul(in[i], factor);
}

void half_to_float_scaled(const std::uint16_t* in, float factor, float* out, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) out[i] = fmul(half_to_float(in[i]), factor);
}

std::size_t count_nonfinite(const float* in, std::size_t n) {
  std::size_t bad = 0;
  for (std::size_t i = 0; i < n; ++i) bad += !is_finite(in[i]);
  return bad;
}

}  // namespace gradcomm::kernels
