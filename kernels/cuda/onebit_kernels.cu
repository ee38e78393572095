// CUDA kernels of the 1-bit compressed allreduce; see onebit_kernels.cuh. The element
// operations are those of kernels/shared/onebit_math.h (x + e, acc / p + e, v - s), so
// signs and errors match the CPU bitwise given the same scale; the scale itself comes
// from a fixed-shape tree of double partial sums (deterministic, within 1e-12 relative of
// the CPU's sum before the final rounding to fp32).
#include <cuda_runtime.h>

#include "kernels/cuda/block_ops.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/onebit_kernels.cuh"
#include "kernels/shared/grid.h"
#include "kernels/shared/onebit_math.h"

namespace gradcomm::kernels::cuda {
namespace {

constexpr unsigned kThreads = kThreadsPerBlock;
constexpr unsigned kPartials = 512;  // blocks of the norm kernels: fixed, so the sum order is too

struct Scratch {
  double partial[kPartials];
  float scale;
};

__device__ __forceinline__ float load_x(const float* x, std::size_t n, std::size_t i) {
  return i < n ? x[i] : 0.0f;
}

__device__ __forceinline__ bool skipped(const std::uint32_t* bad) { return bad != nullptr && *bad != 0; }

__global__ void worker_sumsq(const float* x, std::size_t n, const float* err, std::size_t padded,
                             Scratch* scratch, std::uint32_t* nonfinite) {
  double sum = 0;
  unsigned long long bad = 0;
  const GridStride gs = grid_stride(blockIdx.x, blockDim.x, threadIdx.x, gridDim.x);
  for (std::size_t i = gs.first; i < padded; i += gs.stride) {
    if (i < n) bad += !is_finite(x[i]);
    const float v = onebit::compensated(load_x(x, n, i), err[i]);
    sum += static_cast<double>(v) * static_cast<double>(v);
  }
  sum = block_reduce(sum, SumOp());
  if (threadIdx.x == 0) scratch->partial[blockIdx.x] = sum;
  block_add_count(bad, nonfinite);
}

// One block: reduce the partials, and write the scale into scratch and at the head of
// `segments` segments `stride` bytes apart (4-byte aligned: onebit::segment_bytes).
__global__ void finish_scale(Scratch* scratch, std::size_t count, std::uint8_t* base, std::size_t stride,
                             int segments, const std::uint32_t* bad) {
  if (skipped(bad)) return;
  double sum = 0;
  for (unsigned b = threadIdx.x; b < kPartials; b += blockDim.x) sum += scratch->partial[b];
  sum = block_reduce(sum, SumOp());
  const float scale = onebit::scale_of(sum, count);
  if (threadIdx.x == 0) scratch->scale = scale;
  for (int j = threadIdx.x; j < segments; j += blockDim.x) {
    *reinterpret_cast<float*>(base + static_cast<std::size_t>(j) * stride) = scale;
  }
}

// One thread per output byte (8 elements); byte g of the tensor belongs to chunk
// g / chunk_bytes, written after that chunk's scale.
__global__ void pack_with_error(const float* x, std::size_t n, float* err, std::size_t count,
                                std::size_t chunk_bytes, std::uint8_t* base, std::size_t stride,
                                const Scratch* scratch, const std::uint32_t* bad) {
  if (skipped(bad)) return;
  const float scale = scratch->scale;
  const GridStride gs = grid_stride(blockIdx.x, blockDim.x, threadIdx.x, gridDim.x);
  for (std::size_t g = gs.first; g < count / 8; g += gs.stride) {
    unsigned byte = 0;
    for (unsigned k = 0; k < 8; ++k) {
      const std::size_t i = 8 * g + k;
      const float v = onebit::compensated(load_x(x, n, i), err[i]);
      byte |= static_cast<unsigned>(onebit::positive(v)) << k;
      err[i] = onebit::error_after(v, scale);
    }
    base[(g / chunk_bytes) * stride + sizeof(float) + g % chunk_bytes] = static_cast<std::uint8_t>(byte);
  }
}

__global__ void gather_scales(const std::uint8_t* segments, std::size_t stride, std::size_t count,
                              float* scales, std::uint32_t* bad) {
  const GridStride gs = grid_stride(blockIdx.x, blockDim.x, threadIdx.x, gridDim.x);
  for (std::size_t j = gs.first; j < count; j += gs.stride) {
    const float scale = *reinterpret_cast<const float*>(segments + j * stride);
    scales[j] = scale;
    if (!(is_finite(scale) && scale >= 0.0f)) atomicExch(bad, 1u);
  }
}

// One thread per byte of the chunk: sum the ranks' signed scales in rank order, average,
// add the server error, and leave per-block squared norms for finish_scale.
__global__ void server_accumulate(const std::uint8_t* segments, std::size_t stride, int ranks, float* err,
                                  std::size_t chunk, Scratch* scratch, const std::uint32_t* bad) {
  if (skipped(bad)) return;
  double sum = 0;
  const float divisor = static_cast<float>(ranks);
  const GridStride gs = grid_stride(blockIdx.x, blockDim.x, threadIdx.x, gridDim.x);
  for (std::size_t g = gs.first; g < chunk / 8; g += gs.stride) {
    float acc[8] = {};
    for (int r = 0; r < ranks; ++r) {
      const std::uint8_t* segment = segments + static_cast<std::size_t>(r) * stride;
      const float scale = *reinterpret_cast<const float*>(segment);
      const std::uint8_t* bits = segment + sizeof(float);
      for (unsigned k = 0; k < 8; ++k) {
        acc[k] = fadd(acc[k], onebit::signed_scale(onebit::sign_bit(bits, 8 * g + k), scale));
      }
    }
    for (unsigned k = 0; k < 8; ++k) {
      const float y = onebit::server_value(acc[k], divisor, err[8 * g + k]);
      err[8 * g + k] = y;
      sum += static_cast<double>(y) * static_cast<double>(y);
    }
  }
  sum = block_reduce(sum, SumOp());
  if (threadIdx.x == 0) scratch->partial[blockIdx.x] = sum;
}

__global__ void decode(const std::uint8_t* segments, std::size_t stride, std::size_t chunk, float* out,
                       std::size_t n, const std::uint32_t* bad) {
  if (skipped(bad)) return;
  const GridStride gs = grid_stride(blockIdx.x, blockDim.x, threadIdx.x, gridDim.x);
  for (std::size_t i = gs.first; i < n; i += gs.stride) {
    const std::uint8_t* segment = segments + (i / chunk) * stride;
    const float scale = *reinterpret_cast<const float*>(segment);
    out[i] = onebit::signed_scale(onebit::sign_bit(segment + sizeof(float), i % chunk), scale);
  }
}

}  // namespace

std::size_t onebit_scratch_bytes() { return sizeof(Scratch); }

void onebit_worker_compress(const float* x, std::size_t n, float* err, std::size_t padded, int ranks,
                            std::uint8_t* base, std::size_t stride, void* scratch, std::uint32_t* nonfinite,
                            void* stream) {
  if (padded == 0) return;
  GRADCOMM_CHECK_ARG(stride % 4 == 0 && reinterpret_cast<std::uintptr_t>(base) % 4 == 0,
                     "1-bit worker compress (CUDA): segments ", stride,
                     " bytes apart must start on 4-byte boundaries (onebit::segment_bytes)");
  auto* s = static_cast<Scratch*>(scratch);
  const cudaStream_t st = as_stream(stream);
  worker_sumsq<<<kPartials, kThreads, 0, st>>>(x, n, err, padded, s, nonfinite);
  check_launch("1-bit worker_sumsq");
  finish_scale<<<1, kThreads, 0, st>>>(s, padded, base, stride, ranks, nullptr);
  check_launch("1-bit finish_scale");
  const std::size_t chunk_bytes = padded / static_cast<std::size_t>(ranks) / 8;
  pack_with_error<<<grid_blocks(padded / 8), kThreads, 0, st>>>(x, n, err, padded, chunk_bytes, base, stride, s,
                                                                nullptr);
  check_launch("1-bit pack_with_error (worker)");
}

void onebit_gather_scales(const std::uint8_t* segments, std::size_t stride, std::size_t count, float* scales,
                          std::uint32_t* bad, void* stream) {
  if (count == 0) return;
  gather_scales<<<grid_blocks(count), kThreads, 0, as_stream(stream)>>>(segments, stride, count, scales, bad);
  check_launch("1-bit gather_scales");
}

void onebit_server_compress(const std::uint8_t* segments, std::size_t stride, int ranks, float* err,
                            std::size_t chunk, std::uint8_t* out_segment, void* scratch,
                            const std::uint32_t* bad, void* stream) {
  if (chunk == 0) return;
  auto* s = static_cast<Scratch*>(scratch);
  const cudaStream_t st = as_stream(stream);
  server_accumulate<<<kPartials, kThreads, 0, st>>>(segments, stride, ranks, err, chunk, s, bad);
  check_launch("1-bit server_accumulate");
  finish_scale<<<1, kThreads, 0, st>>>(s, chunk, out_segment, 0, 1, bad);
  check_launch("1-bit finish_scale (server)");
  pack_with_error<<<grid_blocks(chunk / 8), kThreads, 0, st>>>(nullptr, 0, err, chunk, chunk / 8, out_segment, 0,
                                                               s, bad);
  check_launch("1-bit pack_with_error (server)");
}

void onebit_decode(const std::uint8_t* segments, std::size_t stride, std::size_t chunk, float* out, std::size_t n,
                   const std::uint32_t* bad, void* stream) {
  if (n == 0) return;
  decode<<<grid_blocks(n), kThreads, 0, as_stream(stream)>>>(segments, stride, chunk, out, n, bad);
  check_launch("1-bit decode");
}

}  // namespace gradcomm::kernels::cuda
