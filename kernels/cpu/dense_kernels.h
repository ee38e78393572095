// Element-wise kernels of the dense path (and helpers other compressors reuse), built on
// the element operations of kernels/shared/float_ops.h that their CUDA twins
// (kernels/cuda/dense_kernels.cuh) share. Each takes plain pointers and a count: no
// allocation, no communication.
#pragma once

#include <cstddef>
#include <cstdint>

namespace gradcomm::kernels {

// out[i] = finite(in[i]) ? in[i] : 0; returns how many were not finite. in may equal out.
std::size_t copy_zeroing_nonfinite(const float* in, float* out, std::size_t n);

// out[i] = half(finite(in[i]) ? in[i] : 0); returns how many inputs were not finite.
std::size_t to_half_zeroing_nonfinite(const float* in, std::uint16_t* out, std::size_t n);

// out[i] = in[i] * scale. in may equal out.
void scale(const float* in, float scale, float* out, std::size_t n);

// out[i] = float(in[i]) * scale.
void half_to_float_scaled(const std::uint16_t* in, float scale, float* out, std::size_t n);

// Number of non-finite elements.
std::size_t count_nonfinite(const float* in, std::size_t n);

}  // namespace gradcomm::kernels
