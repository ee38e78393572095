#include "kernels/cpu/convert_kernels.h"

#include "core/float16.h"

namespace gradcomm::kernels {

void widen_to_f32(const std::uint16_t* in, DType dtype, float* out, std::size_t n) {
  if (dtype == DType::kBFloat16) {
    for (std::size_t i = 0; i < n; ++i) out[i] = bfloat16_to_float(in[i]);
  } else {
    for (std::size_t i = 0; i < n; ++i) out[i] = half_to_float(in[i]);
  }
}

void narrow_from_f32(const float* in, DType dtype, std::uint16_t* out, std::size_t n) {
  if (dtype == DType::kBFloat16) {
    for (std::size_t i = 0; i < n; ++i) out[i] = float_to_bfloat16(in[i]);
  } else {
    for (std::size_t i = 0; i < n; ++i) out[i] = float_to_half(in[i]);
  }
}

}  // namespace gradcomm::kernels
