#include <cuda_runtime.h>

#include "core/float16.h"
#include "kernels/cuda/block_ops.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/dense_kernels.cuh"
#include "kernels/shared/float_ops.h"
#include "kernels/shared/grid.h"

namespace gradcomm::kernels::cuda {
namespace {

template <bool kHalf>
__global__ void zeroing_copy(const float* __restrict__ in, void* out, std::size_t n, std::uint32_t* nonfinite) {
  unsigned long long bad = 0;
  const GridStride gs = grid_stride(blockIdx.x, blockDim.x, threadIdx.x, gridDim.x);
  for (std::size_t i = gs.first; i < n; i += gs.stride) {
    bad += !is_finite(in[i]);
    if constexpr (kHalf) {
      static_cast<std::uint16_t*>(out)[i] = float_to_half(finite_or_zero(in[i]));
    } else {
      static_cast<float*>(out)[i] = finite_or_zero(in[i]);
    }
  }
  block_add_count(bad, nonfinite);
}

template <bool kHalf>
__global__ void scaled(const void* in, float factor, float* __restrict__ out, std::size_t n) {
  const GridStride gs = grid_stride(blockIdx.x, blockDim.x, threadIdx.x, gridDim.x);
  for (std::size_t i = gs.first; i < n; i += gs.stride) {
    const float x = kHalf ? half_to_float(static_cast<const std::uint16_t*>(in)[i]) : static_cast<const float*>(in)[i];
    out[i] = fmul(x, factor);
  }
}

}  // namespace

void copy_zeroing_nonfinite(const float* in, float* out, std::size_t n, std::uint32_t* nonfinite, void* stream) {
  if (n == 0) return;
  zeroing_copy<false><<<grid_blocks(n), kThreadsPerBlock, 0, as_stream(stream)>>>(in, out, n, nonfinite);
  check_launch("copy_zeroing_nonfinite");
}

void to_half_zeroing_nonfinite(const float* in, std::uint16_t* out, std::size_t n, std::uint32_t* nonfinite,
                               void* stream) {
  if (n == 0) return;
  zeroing_copy<true><<<grid_blocks(n), kThreadsPerBlock, 0, as_stream(stream)>>>(in, out, n, nonfinite);
  check_launch("to_half_zeroing_nonfinite");
}

void scale(const float* in, float factor, float* out, std::size_t n, void* stream) {
  if (n == 0) return;
  scaled<false><<<grid_blocks(n), kThreadsPerBlock, 0, as_stream(stream)>>>(in, factor, out, n);
  check_launch("scale");
}

void half_to_float_scaled(const std::uint16_t* in, float factor, float* out, std::size_t n, void* stream) {
  if (n == 0) return;
  scaled<true><<<grid_blocks(n), kThreadsPerBlock, 0, as_stream(stream)>>>(in, factor, out, n);
  check_launch("half_to_float_scaled");
}

}  // namespace gradcomm::kernels::cuda
