#include <algorithm>

#include "core/float16.h"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/engine_kernels.cuh"

namespace gradcomm::kernels::cuda {
namespace {

constexpr unsigned kThreads = 256;
constexpr std::size_t kMaxBlocks = 4096;  // grid-stride loops cover any n

unsigned blocks_for(std::size_t n) {
  return static_cast<unsigned>(std::clamp<std::size_t>((n + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

__global__ void status_kernel(const std::uint32_t* counts, const std::uint32_t* layers_in_order,
                              std::size_t first, std::size_t layers, void* status, bool half) {
  for (std::size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < layers; i += gridDim.x * blockDim.x) {
    const float flag = counts[layers_in_order[first + i]] != 0 ? 1.0f : 0.0f;
    if (half) {
      static_cast<std::uint16_t*>(status)[i] = float_to_half(flag);
    } else {
      static_cast<float*>(status)[i] = flag;
    }
  }
}

__global__ void header_kernel(const std::uint32_t* counts, const std::uint32_t* layers_in_order,
                              std::size_t first, std::size_t layers, std::uint32_t* header,
                              std::size_t header_words) {
  for (std::size_t w = blockIdx.x * blockDim.x + threadIdx.x; w < header_words; w += gridDim.x * blockDim.x) {
    if (w == 0) {
      header[0] = static_cast<std::uint32_t>(layers);
    } else if (w <= layers) {
      header[w] = counts[layers_in_order[first + (w - 1)]];
    } else {
      header[w] = 0;
    }
  }
}

__global__ void widen_kernel(const std::uint16_t* in, bool bfloat16, float* out, std::size_t n) {
  for (std::size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    out[i] = bfloat16 ? bfloat16_to_float(in[i]) : half_to_float(in[i]);
  }
}

__global__ void narrow_kernel(const float* in, bool bfloat16, std::uint16_t* out, std::size_t n) {
  for (std::size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    out[i] = bfloat16 ? float_to_bfloat16(in[i]) : float_to_half(in[i]);
  }
}

}  // namespace

void frame_allreduce_status(const std::uint32_t* counts, const std::uint32_t* layers_in_order,
                            std::size_t first, std::size_t layers, void* status, bool half, void* stream) {
  if (layers == 0) return;
  status_kernel<<<blocks_for(layers), kThreads, 0, as_stream(stream)>>>(counts, layers_in_order, first, layers,
                                                                       status, half);
  check_launch("the StepEngine's status framing");
}

void frame_allgather_header(const std::uint32_t* counts, const std::uint32_t* layers_in_order,
                            std::size_t first, std::size_t layers, std::uint32_t* header,
                            std::size_t header_words, void* stream) {
  header_kernel<<<blocks_for(header_words), kThreads, 0, as_stream(stream)>>>(counts, layers_in_order, first, layers,
                                                                              header, header_words);
  check_launch("the StepEngine's header framing");
}

void widen_to_f32(const std::uint16_t* in, bool bfloat16, float* out, std::size_t n, void* stream) {
  if (n == 0) return;
  widen_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(in, bfloat16, out, n);
  check_launch("the StepEngine's 16-bit widening");
}

void narrow_from_f32(const float* in, bool bfloat16, std::uint16_t* out, std::size_t n, void* stream) {
  if (n == 0) return;
  narrow_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(in, bfloat16, out, n);
  check_launch("the StepEngine's 16-bit narrowing");
}

}  // namespace gradcomm::kernels::cuda
