// CUDA kernels of the 1-bit compressed allreduce; see onebit_kernels.cuh. Every element
// operation is the same fp32 operation as the CPU kernel (x + e, acc / p + e, v - s), so
// signs and errors match the CPU bitwise given the same scale; the scale itself comes
// from a fixed-shape tree of double partial sums (deterministic, within 1e-12 relative of
// the CPU's sum before the final rounding to fp32).
#include <cuda_runtime.h>

#include "gradcomm/error.h"
#include "kernels/cuda/onebit_kernels.cuh"

namespace gradcomm::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kPartials = 512;  // blocks of the norm kernels: fixed, so the sum order is too

struct Scratch {
  double partial[kPartials];
  unsigned long long partial_bad[kPartials];
  float scale;
  unsigned long long nonfinite;
};

#define GRADCOMM_CUDA_CHECK(call, what)                                                     \
  do {                                                                                      \
    const cudaError_t status_ = (call);                                                     \
    GRADCOMM_CHECK(status_ == cudaSuccess, ::gradcomm::ErrorCode::kCuda, "1-bit ", what, ": ", \
                   cudaGetErrorString(status_));                                            \
  } while (0)

cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

__device__ __forceinline__ bool finite(float x) { return (x - x) == 0.0f; }

__device__ __forceinline__ float load_x(const float* x, std::size_t n, std::size_t i) {
  if (i >= n) return 0.0f;
  const float v = x[i];
  return finite(v) ? v : 0.0f;
}

// Block-wide sum of `value` in a fixed tree; thread 0 gets the result.
template <typename T>
__device__ T block_sum(T value) {
  __shared__ T shared[kThreads];
  shared[threadIdx.x] = value;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) shared[threadIdx.x] += shared[threadIdx.x + width];
    __syncthreads();
  }
  const T total = shared[0];
  __syncthreads();
  return total;
}

__global__ void worker_sumsq(const float* x, std::size_t n, const float* err, std::size_t padded,
                             Scratch* scratch) {
  double sum = 0;
  unsigned long long bad = 0;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < padded;
       i += stride) {
    if (i < n) bad += !finite(x[i]);
    const float v = load_x(x, n, i) + err[i];
    sum += static_cast<double>(v) * static_cast<double>(v);
  }
  sum = block_sum(sum);
  bad = block_sum(bad);
  if (threadIdx.x == 0) {
    scratch->partial[blockIdx.x] = sum;
    scratch->partial_bad[blockIdx.x] = bad;
  }
}

// One block: reduce the partials, and write the scale into scratch and at the head of
// `segments` segments `stride` bytes apart (4-byte aligned by the layout).
__global__ void finish_scale(Scratch* scratch, std::size_t count, std::uint8_t* base,
                             std::size_t stride, int segments) {
  double sum = 0;
  unsigned long long bad = 0;
  for (int b = threadIdx.x; b < kPartials; b += blockDim.x) {
    sum += scratch->partial[b];
    bad += scratch->partial_bad[b];
  }
  sum = block_sum(sum);
  bad = block_sum(bad);
  __shared__ float scale;
  if (threadIdx.x == 0) {
    scale = count == 0 ? 0.0f : static_cast<float>(sqrt(sum / static_cast<double>(count)));
    scratch->scale = scale;
    scratch->nonfinite = bad;
  }
  __syncthreads();
  for (int j = threadIdx.x; j < segments; j += blockDim.x) {
    *reinterpret_cast<float*>(base + static_cast<std::size_t>(j) * stride) = scale;
  }
}

// One thread per output byte (8 elements); byte g of the tensor belongs to chunk
// g / chunk_bytes, written after that chunk's scale.
__global__ void pack_with_error(const float* x, std::size_t n, float* err, std::size_t count,
                                std::size_t chunk_bytes, std::uint8_t* base, std::size_t stride,
                                const Scratch* scratch) {
  const std::size_t g = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  if (g >= count / 8) return;
  const float scale = scratch->scale;
  unsigned byte = 0;
  for (unsigned k = 0; k < 8; ++k) {
    const std::size_t i = 8 * g + k;
    const float v = load_x(x, n, i) + err[i];
    const bool positive = v >= 0.0f;
    byte |= static_cast<unsigned>(positive) << k;
    err[i] = v - (positive ? scale : -scale);
  }
  base[(g / chunk_bytes) * stride + sizeof(float) + g % chunk_bytes] = static_cast<std::uint8_t>(byte);
}

// One thread per byte of the chunk: sum the ranks' signed scales in rank order, divide,
// add the server error, and leave per-block squared norms for finish_scale.
__global__ void server_accumulate(const std::uint8_t* segments, std::size_t stride, int ranks,
                                  float* err, std::size_t chunk, Scratch* scratch) {
  double sum = 0;
  const float divisor = static_cast<float>(ranks);
  const std::size_t bytes = chunk / 8;
  const std::size_t step = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t g = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; g < bytes;
       g += step) {
    float acc[8] = {};
    for (int r = 0; r < ranks; ++r) {
      const std::uint8_t* segment = segments + static_cast<std::size_t>(r) * stride;
      const float scale = *reinterpret_cast<const float*>(segment);
      const unsigned byte = segment[sizeof(float) + g];
      for (unsigned k = 0; k < 8; ++k) acc[k] += ((byte >> k) & 1u) ? scale : -scale;
    }
    for (unsigned k = 0; k < 8; ++k) {
      const float y = __fadd_rn(__fdiv_rn(acc[k], divisor), err[8 * g + k]);
      err[8 * g + k] = y;
      sum += static_cast<double>(y) * static_cast<double>(y);
    }
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) {
    scratch->partial[blockIdx.x] = sum;
    scratch->partial_bad[blockIdx.x] = 0;
  }
}

__global__ void decode(const std::uint8_t* segments, std::size_t stride, std::size_t chunk,
                       float* out, std::size_t n) {
  const std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const std::size_t j = i / chunk, local = i % chunk;
  const std::uint8_t* segment = segments + j * stride;
  const float scale = *reinterpret_cast<const float*>(segment);
  const bool positive = (segment[sizeof(float) + local / 8] >> (local % 8)) & 1u;
  out[i] = positive ? scale : -scale;
}

unsigned grid_for(std::size_t items) {
  return static_cast<unsigned>((items + kThreads - 1) / kThreads);
}

void check_launch(const char* what) { GRADCOMM_CUDA_CHECK(cudaGetLastError(), what); }

}  // namespace

std::size_t onebit_scratch_bytes() { return sizeof(Scratch); }

void* onebit_device_alloc(std::size_t bytes) {
  void* ptr = nullptr;
  GRADCOMM_CUDA_CHECK(cudaMalloc(&ptr, bytes), "cudaMalloc");
  return ptr;
}

void onebit_device_free(void* ptr) noexcept { cudaFree(ptr); }

void onebit_device_zero(void* ptr, std::size_t bytes) {
  GRADCOMM_CUDA_CHECK(cudaMemset(ptr, 0, bytes), "cudaMemset");
}

void onebit_copy_to_host(void* dst, const void* src, std::size_t bytes) {
  GRADCOMM_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy to host");
}

void onebit_copy_to_device(void* dst, const void* src, std::size_t bytes) {
  GRADCOMM_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy to device");
}

void onebit_synchronize(void* stream) {
  GRADCOMM_CUDA_CHECK(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize");
}

void onebit_worker_compress(const float* x, std::size_t n, float* err, std::size_t padded,
                            int ranks, std::uint8_t* base, std::size_t stride, void* scratch,
                            void* stream) {
  if (padded == 0) return;
  auto* s = static_cast<Scratch*>(scratch);
  const cudaStream_t st = as_stream(stream);
  worker_sumsq<<<kPartials, kThreads, 0, st>>>(x, n, err, padded, s);
  check_launch("worker_sumsq");
  finish_scale<<<1, kThreads, 0, st>>>(s, padded, base, stride, ranks);
  check_launch("finish_scale");
  const std::size_t chunk_bytes = padded / static_cast<std::size_t>(ranks) / 8;
  pack_with_error<<<grid_for(padded / 8), kThreads, 0, st>>>(x, n, err, padded, chunk_bytes, base,
                                                              stride, s);
  check_launch("pack_with_error (worker)");
}

void onebit_server_compress(const std::uint8_t* segments, std::size_t stride, int ranks,
                            float* err, std::size_t chunk, std::uint8_t* out_segment,
                            void* scratch, void* stream) {
  if (chunk == 0) return;
  auto* s = static_cast<Scratch*>(scratch);
  const cudaStream_t st = as_stream(stream);
  server_accumulate<<<kPartials, kThreads, 0, st>>>(segments, stride, ranks, err, chunk, s);
  check_launch("server_accumulate");
  finish_scale<<<1, kThreads, 0, st>>>(s, chunk, out_segment, 0, 1);
  check_launch("finish_scale (server)");
  pack_with_error<<<grid_for(chunk / 8), kThreads, 0, st>>>(nullptr, 0, err, chunk, chunk / 8,
                                                             out_segment, 0, s);
  check_launch("pack_with_error (server)");
}

void onebit_decode(const std::uint8_t* segments, std::size_t stride, int /*ranks*/,
                   std::size_t chunk, float* out, std::size_t n, void* stream) {
  if (n == 0) return;
  decode<<<grid_for(n), kThreads, 0, as_stream(stream)>>>(segments, stride, chunk, out, n);
  check_launch("decode");
}

std::size_t onebit_read_nonfinite(const void* scratch, void* stream) {
  onebit_synchronize(stream);
  unsigned long long count = 0;
  GRADCOMM_CUDA_CHECK(cudaMemcpy(&count, &static_cast<const Scratch*>(scratch)->nonfinite,
                                 sizeof count, cudaMemcpyDeviceToHost),
                      "reading the non-finite count");
  return static_cast<std::size_t>(count);
}

}  // namespace gradcomm::kernels::cuda
