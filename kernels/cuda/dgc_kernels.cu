// CUDA kernels of DGC's sparse encode; see dgc_kernels.cuh. Candidates are collected in any
// order (one atomic per candidate) and then radix-sorted by their unique keys, so the
// result does not depend on thread scheduling.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <bit>
#include <climits>
#include <cmath>
#include <cub/device/device_radix_sort.cuh>

#include "gradcomm/error.h"
#include "kernels/cuda/dgc_kernels.cuh"

namespace gradcomm::kernels::cuda {

#define GRADCOMM_DGC_CUDA_CHECK(call, what)                                                       \
  do {                                                                                            \
    const cudaError_t status_ = (call);                                                           \
    GRADCOMM_CHECK(status_ == cudaSuccess, ::gradcomm::ErrorCode::kCuda, "DGC CUDA ", what, ": ", \
                   cudaGetErrorString(status_));                                                  \
  } while (0)

namespace {

constexpr int kThreads = 256;
constexpr std::uint32_t kSentinel = 0xffffffffu;
// The same constants as the CPU path (src/compress/dgc/dgc_encode.cpp).
constexpr double kOversample = 1.3;
constexpr double kLowFraction = 0.8;
constexpr float kLowerFactor = 0.8f;
constexpr int kMaxRounds = 10;

cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

unsigned grid_for(std::size_t n) {
  const std::size_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::clamp<std::size_t>(blocks, 1, 65535u * 8u));
}

__device__ __forceinline__ bool finite(float x) { return (x - x) == 0.0f; }
__device__ __forceinline__ std::uint32_t abs_bits(float x) {
  return __float_as_uint(x) & 0x7fffffffu;
}

// u and v exactly as kernels::dgc_accumulate computes them on the CPU: every multiply and
// add rounded on its own (__fmul_rn/__fadd_rn are never contracted into an FMA).
__global__ void accumulate_kernel(const float* __restrict__ g, float* __restrict__ u,
                                  float* __restrict__ v, std::size_t n, float m, bool nesterov,
                                  float s, bool scaled, unsigned long long* nonfinite) {
  unsigned long long bad = 0;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const float raw = g[i];
    const bool ok = finite(raw);
    bad += !ok;
    const float x = ok ? (scaled ? __fmul_rn(raw, s) : raw) : 0.0f;
    if (nesterov) {
      const float un = __fmul_rn(m, __fadd_rn(u[i], x));
      u[i] = un;
      v[i] = __fadd_rn(__fadd_rn(v[i], un), x);
    } else {
      const float un = __fadd_rn(__fmul_rn(m, u[i]), x);
      u[i] = un;
      v[i] = __fadd_rn(v[i], un);
    }
  }
  if (bad) atomicAdd(nonfinite, bad);
}

__global__ void sample_kernel(const float* __restrict__ v, std::size_t start, std::size_t stride,
                              std::size_t count, std::uint32_t* __restrict__ samples) {
  const std::size_t j = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  if (j < count) samples[j] = abs_bits(v[start + j * stride]);
}

__global__ void collect_kernel(const float* __restrict__ v, std::size_t n, std::uint32_t t,
                               std::uint64_t* __restrict__ keys, unsigned long long* count) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const std::uint32_t a = abs_bits(v[i]);
    if (a >= t) {
      const unsigned long long at = atomicAdd(count, 1ull);
      keys[at] =
          (static_cast<std::uint64_t>(a) << 32) | (0xffffffffu - static_cast<std::uint32_t>(i));
    }
  }
}

__global__ void key_index_kernel(const std::uint64_t* __restrict__ keys, std::size_t m,
                                 std::uint32_t* __restrict__ indices) {
  const std::size_t j = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  if (j < m) indices[j] = 0xffffffffu - static_cast<std::uint32_t>(keys[j]);
}

// Slots [0, sent): index and value, and what was sent leaves v (fp16: the rounding stays);
// slots [sent, k): the sentinel and 0. The payload was zeroed, so the padding is 0.
__global__ void pack_kernel(const std::uint32_t* __restrict__ indices, std::size_t sent,
                            std::size_t k, float* __restrict__ v, float* __restrict__ u,
                            bool masking, bool half_values, std::uint8_t* __restrict__ payload) {
  const std::size_t j = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  auto* slots = reinterpret_cast<std::uint32_t*>(payload + 4);
  if (j == 0) *reinterpret_cast<std::uint32_t*>(payload) = static_cast<std::uint32_t>(sent);
  if (j >= k) return;
  if (j >= sent) {
    slots[j] = kSentinel;
    return;
  }
  const std::uint32_t i = indices[j];
  slots[j] = i;
  const float x = v[i];
  if (half_values) {
    const __half h = __float2half_rn(fminf(fmaxf(x, -65504.0f), 65504.0f));
    reinterpret_cast<__half*>(payload + 4 + 4 * k)[j] = h;
    v[i] = __fsub_rn(x, __half2float(h));
  } else {
    reinterpret_cast<float*>(payload + 4 + 4 * k)[j] = x;
    v[i] = 0.0f;
  }
  if (masking) u[i] = 0.0f;
}

}  // namespace

std::size_t dgc_payload_bytes(std::size_t k, bool half_values) {
  return (4 + k * (half_values ? 6 : 8) + 7) / 8 * 8;
}

DgcWorkspace::DgcWorkspace(std::size_t max_numel, std::size_t sample_stride)
    : max_numel_(max_numel), sample_stride_(std::max<std::size_t>(sample_stride, 1)) {
  // CUB's sorts here take an int item count.
  GRADCOMM_CHECK_ARG(max_numel <= static_cast<std::size_t>(INT_MAX), "DgcWorkspace: ", max_numel,
                     " elements; at most 2^31 - 1 per layer on the GPU path");
  const std::size_t n = std::max<std::size_t>(max_numel, 1);
  const std::size_t samples = n / sample_stride_ + 1;
  auto alloc = [](auto** ptr, std::size_t count, const char* what) {
    GRADCOMM_DGC_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(ptr), count * sizeof(**ptr)), what);
  };
  try {
    alloc(&keys_, n, "cudaMalloc(keys)");
    alloc(&keys_alt_, n, "cudaMalloc(keys)");
    alloc(&indices_, n, "cudaMalloc(indices)");
    alloc(&indices_alt_, n, "cudaMalloc(indices)");
    alloc(&samples_, samples, "cudaMalloc(samples)");
    alloc(&samples_alt_, samples, "cudaMalloc(samples)");
    alloc(&counters_, 2, "cudaMalloc(counters)");
    // One temporary storage for the three sorts: the largest of their needs.
    std::size_t a = 0, b = 0, c = 0;
    const int items = static_cast<int>(n);
    GRADCOMM_DGC_CUDA_CHECK(
        cub::DeviceRadixSort::SortKeysDescending(nullptr, a, keys_, keys_alt_, items),
        "radix sort size query");
    GRADCOMM_DGC_CUDA_CHECK(
        cub::DeviceRadixSort::SortKeys(nullptr, b, indices_, indices_alt_, items),
        "radix sort size query");
    GRADCOMM_DGC_CUDA_CHECK(cub::DeviceRadixSort::SortKeysDescending(
                                nullptr, c, samples_, samples_alt_, static_cast<int>(samples)),
                            "radix sort size query");
    temp_bytes_ = std::max({a, b, c, std::size_t{1}});
    GRADCOMM_DGC_CUDA_CHECK(cudaMalloc(&temp_, temp_bytes_), "cudaMalloc(sort storage)");
  } catch (...) {
    release();
    throw;
  }
}

DgcWorkspace::~DgcWorkspace() { release(); }

void DgcWorkspace::release() noexcept {
  for (void* p :
       {static_cast<void*>(keys_), static_cast<void*>(keys_alt_), static_cast<void*>(indices_),
        static_cast<void*>(indices_alt_), static_cast<void*>(samples_),
        static_cast<void*>(samples_alt_), static_cast<void*>(counters_), temp_}) {
    if (p) cudaFree(p);
  }
  keys_ = keys_alt_ = nullptr;
  indices_ = indices_alt_ = samples_ = samples_alt_ = nullptr;
  counters_ = nullptr;
  temp_ = nullptr;
}

namespace {

// Candidates with |v| bits >= t into w.keys_; returns how many (synchronizes).
std::size_t collect(const DgcEncodeArgs& a, std::uint32_t t, cudaStream_t s,
                    unsigned long long* counters, std::uint64_t* keys) {
  GRADCOMM_DGC_CUDA_CHECK(cudaMemsetAsync(counters + 1, 0, sizeof(unsigned long long), s),
                          "memset");
  collect_kernel<<<grid_for(a.n), kThreads, 0, s>>>(a.v, a.n, t, keys, counters + 1);
  GRADCOMM_DGC_CUDA_CHECK(cudaGetLastError(), "collect kernel");
  unsigned long long count = 0;
  GRADCOMM_DGC_CUDA_CHECK(
      cudaMemcpyAsync(&count, counters + 1, sizeof count, cudaMemcpyDeviceToHost, s),
      "read candidate count");
  GRADCOMM_DGC_CUDA_CHECK(cudaStreamSynchronize(s), "collect");
  return static_cast<std::size_t>(count);
}

}  // namespace

DgcEncodeResult dgc_encode(const DgcEncodeArgs& a, DgcWorkspace& workspace, void* stream) {
  DgcWorkspace& w = workspace;
  GRADCOMM_CHECK_ARG(a.n <= w.max_numel_ && a.k <= a.n && (a.k > 0 || a.n == 0),
                     "dgc_encode (CUDA): layer of ", a.n, " elements with k=", a.k,
                     " on a workspace for ", w.max_numel_);
  const cudaStream_t s = as_stream(stream);
  DgcEncodeResult r;
  const std::size_t payload_bytes = dgc_payload_bytes(a.k, a.half_values);
  GRADCOMM_DGC_CUDA_CHECK(cudaMemsetAsync(a.payload, 0, payload_bytes, s), "memset payload");
  GRADCOMM_DGC_CUDA_CHECK(cudaMemsetAsync(w.counters_, 0, 2 * sizeof(unsigned long long), s),
                          "memset");
  if (a.n > 0) {
    accumulate_kernel<<<grid_for(a.n), kThreads, 0, s>>>(a.grad, a.u, a.v, a.n, a.momentum,
                                                         a.nesterov, a.grad_scale,
                                                         a.grad_scale != 1.0f, w.counters_);
    GRADCOMM_DGC_CUDA_CHECK(cudaGetLastError(), "accumulate kernel");
  }

  std::uint32_t t = 1;  // exact: every nonzero is a candidate
  if (!a.exact && a.n > 0) {
    const std::size_t start = a.sample_start % std::min(w.sample_stride_, a.n);
    const std::size_t count = (a.n - start + w.sample_stride_ - 1) / w.sample_stride_;
    sample_kernel<<<grid_for(count), kThreads, 0, s>>>(a.v, start, w.sample_stride_, count,
                                                       w.samples_);
    GRADCOMM_DGC_CUDA_CHECK(cudaGetLastError(), "sample kernel");
    std::size_t bytes = w.temp_bytes_;
    GRADCOMM_DGC_CUDA_CHECK(
        cub::DeviceRadixSort::SortKeysDescending(w.temp_, bytes, w.samples_, w.samples_alt_,
                                                 static_cast<int>(count), 0, 32, s),
        "sort samples");
    auto c =
        static_cast<std::size_t>(std::ceil(static_cast<double>(count) * a.density * kOversample));
    c = std::clamp<std::size_t>(c, 1, count);
    GRADCOMM_DGC_CUDA_CHECK(
        cudaMemcpyAsync(&t, w.samples_alt_ + (c - 1), sizeof t, cudaMemcpyDeviceToHost, s),
        "read sample threshold");
    GRADCOMM_DGC_CUDA_CHECK(cudaStreamSynchronize(s), "sample threshold");
    t = std::max<std::uint32_t>(t, 1);
  }

  const auto low = static_cast<std::size_t>(std::ceil(kLowFraction * static_cast<double>(a.k)));
  std::size_t count = 0;
  for (;;) {
    count = a.n ? collect(a, t, s, w.counters_, w.keys_) : 0;
    r.rounds += 1;
    if (count >= low || t <= 1 || r.rounds >= kMaxRounds) break;
    const float lowered = std::bit_cast<float>(t) * kLowerFactor;
    t = std::max<std::uint32_t>(std::bit_cast<std::uint32_t>(lowered), 1);
  }
  r.candidates = count;
  r.threshold_bits = t;
  const std::size_t m = std::min(count, a.k);
  if (m > 0) {
    // Unique keys sorted descending: the first m are the top m, in a fixed order.
    std::size_t bytes = w.temp_bytes_;
    GRADCOMM_DGC_CUDA_CHECK(
        cub::DeviceRadixSort::SortKeysDescending(w.temp_, bytes, w.keys_, w.keys_alt_,
                                                 static_cast<int>(count), 0, 64, s),
        "sort candidates");
    key_index_kernel<<<grid_for(m), kThreads, 0, s>>>(w.keys_alt_, m, w.indices_);
    GRADCOMM_DGC_CUDA_CHECK(cudaGetLastError(), "index kernel");
    bytes = w.temp_bytes_;
    GRADCOMM_DGC_CUDA_CHECK(
        cub::DeviceRadixSort::SortKeys(w.temp_, bytes, w.indices_, w.indices_alt_,
                                       static_cast<int>(m), 0, 32, s),
        "sort indices");
  }
  if (a.k > 0) {
    pack_kernel<<<grid_for(a.k), kThreads, 0, s>>>(w.indices_alt_, m, a.k, a.v, a.u, a.masking,
                                                   a.half_values,
                                                   static_cast<std::uint8_t*>(a.payload));
    GRADCOMM_DGC_CUDA_CHECK(cudaGetLastError(), "pack kernel");
  }
  unsigned long long bad = 0;
  GRADCOMM_DGC_CUDA_CHECK(cudaMemcpyAsync(&bad, w.counters_, sizeof bad, cudaMemcpyDeviceToHost, s),
                          "read non-finite count");
  GRADCOMM_DGC_CUDA_CHECK(cudaStreamSynchronize(s), "encode");
  r.nonfinite = static_cast<std::size_t>(bad);
  r.sent = m;
  return r;
}

}  // namespace gradcomm::kernels::cuda
