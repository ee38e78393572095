// 16-bit gradients at the edges of the exchange: the StepEngine widens a float16 or
// bfloat16 gradient to float32 before the compressor sees it, and narrows the float32
// update back into the gradient's dtype (round to nearest even, src/core/float16.h).
#pragma once

#include <cstddef>
#include <cstdint>

#include "gradcomm/tensor.h"

namespace gradcomm::kernels {

// out[i] = float(in[i]); `dtype` is kFloat16 or kBFloat16.
void widen_to_f32(const std::uint16_t* in, DType dtype, float* out, std::size_t n);

// out[i] = dtype(in[i]); `dtype` is kFloat16 or kBFloat16.
void narrow_from_f32(const float* in, DType dtype, std::uint16_t* out, std::size_t n);

}  // namespace gradcomm::kernels
