// CUDA twins of kernels/cpu/dense_kernels.h (the same element operations, so the same
// bits), as host-callable entry points that only enqueue work on `stream` (a
// cudaStream_t; nullptr: the legacy default stream). Non-finite counts are added to the
// device word *nonfinite, saturating at 2^32 - 1.
#pragma once

#include <cstddef>
#include <cstdint>

namespace gradcomm::kernels::cuda {

void copy_zeroing_nonfinite(const float* in, float* out, std::size_t n, std::uint32_t* nonfinite,
                            void* stream);
void to_half_zeroing_nonfinite(const float* in, std::uint16_t* out, std::size_t n, std::uint32_t* nonfinite,
                               void* stream);
void scale(const float* in, float scale, float* out, std::size_t n, void* stream);
void half_to_float_scaled(const std::uint16_t* in, float scale, float* out, std::size_t n, void* stream);

}  // namespace gradcomm::kernels::cuda
