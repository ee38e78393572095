// CUDA kernels of L-GreCo's profiling; see lgreco_kernels.cuh.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <type_traits>
#include <cub/device/device_radix_sort.cuh>

#include "kernels/cuda/block_ops.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/device_buffer.cuh"
#include "kernels/cuda/lgreco_kernels.cuh"
#include "kernels/shared/dgc_math.h"
#include "kernels/shared/grid.h"
#include "kernels/shared/lgreco_math.h"
#include "kernels/shared/quantize_math.h"

namespace gradcomm::kernels::cuda {
namespace {

namespace q = ::gradcomm::kernels::quant;

constexpr unsigned kPartials = 512;  // blocks of the sum of squares: fixed, so its order is too
constexpr std::size_t kMaxCandidates = 255;

struct FloatSum {
  __device__ float operator()(float a, float b) const { return fadd(a, b); }
};

// As the CPU profile: x = finite(g) + residual, or finite(g) alone without one.
__device__ __forceinline__ float profiled(const float* g, const float* residual, std::size_t i) {
  return residual ? q::error_fed(g[i], residual[i]) : finite_or_zero(g[i]);
}

// One block per bucket: its range, then each width's error sum (float; unit^2 applied
// per bucket for stochastic rounding, as the CPU does).
__global__ void quant_bucket_errors(const float* __restrict__ g, const float* __restrict__ residual, std::size_t n,
                                    std::size_t bucket, BitWidths widths, bool stochastic, float* bucket_errors) {
  const std::size_t b = blockIdx.x;
  const std::size_t start = b * bucket;
  const std::size_t len = min(bucket, n - start);
  float lo = INFINITY, hi = -INFINITY;
  for (std::size_t i = threadIdx.x; i < len; i += blockDim.x) {
    const float x = profiled(g, residual, start + i);
    lo = fminf(lo, x);
    hi = fmaxf(hi, x);
  }
  lo = block_reduce(lo, MinOp());
  hi = block_reduce(hi, MaxOp());
  for (int c = 0; c < widths.count; ++c) {
    const int bits = widths.bits[c];
    const q::BucketMeta m = q::bucket_meta(lo, hi, bits);
    const int levels = (1 << bits) - 1;
    float sum = 0.0f;
    for (std::size_t i = threadIdx.x; i < len; i += blockDim.x) {
      const float x = profiled(g, residual, start + i);
      const float term = m.unit == 0.0f ? q::squared_error_unsent(x, m)
                         : stochastic   ? q::stochastic_variance_term(x, m)
                                        : q::squared_error_nearest(x, m, levels);
      sum = fadd(sum, term);
    }
    sum = block_reduce(sum, FloatSum());
    if (stochastic && m.unit != 0.0f) sum = fmul(sum, fmul(m.unit, m.unit));
    if (threadIdx.x == 0) bucket_errors[b * static_cast<std::size_t>(widths.count) + c] = sum;
  }
}

// One block per width: the buckets' sums in double, then the square root.
__global__ void quant_finish(const float* bucket_errors, std::size_t buckets, int count, double* errors) {
  const int c = blockIdx.x;
  double total = 0;
  for (std::size_t b = threadIdx.x; b < buckets; b += blockDim.x) {
    total += bucket_errors[b * static_cast<std::size_t>(count) + c];
  }
  total = block_reduce(total, SumOp());
  if (threadIdx.x == 0) errors[c] = lgreco::sqrt_of(total);
}

template <bool kNesterov>
__device__ __forceinline__ float corrected(const float* g, const float* scale, const float* u, const float* v,
                                           std::size_t i, float m) {
  float x = finite_or_zero(g[i]);
  if (scale) x = fmul(x, *scale);
  return dgc::corrected_velocity<kNesterov>(x, u[i], v[i], m);
}

template <bool kNesterov>
__global__ void dgc_sum_squares(const float* __restrict__ g, const float* scale, const float* __restrict__ u,
                                const float* __restrict__ v, std::size_t n, float m, double* partials) {
  double sum = 0;
  const GridStride gs = grid_stride(blockIdx.x, blockDim.x, threadIdx.x, gridDim.x);
  for (std::size_t i = gs.first; i < n; i += gs.stride) {
    const float x = corrected<kNesterov>(g, scale, u, v, i, m);
    sum += static_cast<double>(x) * x;
  }
  sum = block_reduce(sum, SumOp());
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

template <bool kNesterov>
__global__ void dgc_sample(const float* __restrict__ g, const float* scale, const float* __restrict__ u,
                           const float* __restrict__ v, std::size_t stride, std::size_t samples, float m,
                           float* out) {
  const GridStride gs = grid_stride(blockIdx.x, blockDim.x, threadIdx.x, gridDim.x);
  for (std::size_t j = gs.first; j < samples; j += gs.stride) {
    out[j] = fabsf(corrected<kNesterov>(g, scale, u, v, j * stride, m));
  }
}

__global__ void dgc_finish(const double* partials, const float* sorted_desc, std::size_t top, std::size_t n,
                           std::size_t samples, const double* densities, std::size_t count, double* errors) {
  double total = 0;
  for (unsigned b = threadIdx.x; b < kPartials; b += blockDim.x) total += partials[b];
  total = block_reduce(total, SumOp());
  for (std::size_t c = threadIdx.x; c < count; c += blockDim.x) {
    errors[c] = lgreco::topk_error(total, sorted_desc, top, n, samples, densities[c]);
  }
}

}  // namespace

LgrecoWorkspace::LgrecoWorkspace(std::size_t max_numel, std::size_t bucket, std::size_t candidates,
                                 std::size_t sample_max, int device) {
  GRADCOMM_CHECK_ARG(sample_max <= static_cast<std::size_t>(INT_MAX) && candidates <= kMaxCandidates,
                     "LgrecoWorkspace: ", sample_max, " samples, ", candidates, " candidates");
  const std::size_t buckets = std::max<std::size_t>(q::num_buckets(max_numel, std::max<std::size_t>(bucket, 1)), 1);
  const std::size_t samples = std::max<std::size_t>(sample_max, 1);
  auto alloc = [device](auto** ptr, std::size_t count) {
    *ptr = static_cast<std::remove_reference_t<decltype(*ptr)>>(allocate_zeroed(count * sizeof(**ptr), device));
  };
  try {
    ScopedDevice on(device);  // the sort size query reads the device's properties
    alloc(&bucket_errors_, buckets * std::max<std::size_t>(candidates, 1));
    alloc(&partials_, kPartials);
    alloc(&samples_, samples);
    alloc(&sorted_, samples);
    alloc(&densities_, kMaxCandidates);
    float* none = nullptr;
    GRADCOMM_CUDA_OK(cub::DeviceRadixSort::SortKeysDescending(nullptr, temp_bytes_, none, none,
                                                              static_cast<int>(samples)),
                     "sizing the sample sort");
    temp_bytes_ = std::max<std::size_t>(temp_bytes_, 1);
    temp_ = allocate_zeroed(temp_bytes_, device);
  } catch (...) {
    release();
    throw;
  }
}

LgrecoWorkspace::~LgrecoWorkspace() { release(); }

void LgrecoWorkspace::release() noexcept {
  for (void* p : {static_cast<void*>(bucket_errors_), static_cast<void*>(partials_), static_cast<void*>(samples_),
                  static_cast<void*>(sorted_), static_cast<void*>(densities_), temp_}) {
    free_device(p);
  }
  bucket_errors_ = nullptr;
  partials_ = nullptr;
  samples_ = sorted_ = nullptr;
  densities_ = nullptr;
  temp_ = nullptr;
}

void lgreco_quant_errors(const float* grad, const float* residual, std::size_t n, std::size_t bucket,
                         BitWidths widths, bool stochastic, double* errors, LgrecoWorkspace& w, void* stream) {
  const cudaStream_t s = as_stream(stream);
  const std::size_t buckets = q::num_buckets(n, bucket);
  if (buckets == 0) {
    GRADCOMM_CUDA_OK(cudaMemsetAsync(errors, 0, widths.count * sizeof(double), s), "zeroing an empty layer's errors");
    return;
  }
  quant_bucket_errors<<<static_cast<unsigned>(buckets), threads_for_bucket(bucket), 0, s>>>(
      grad, residual, n, bucket, widths, stochastic, w.bucket_errors());
  check_launch("L-GreCo quantization errors");
  quant_finish<<<static_cast<unsigned>(widths.count), kThreadsPerBlock, 0, s>>>(w.bucket_errors(), buckets,
                                                                                widths.count, errors);
  check_launch("L-GreCo quantization totals");
}

void lgreco_dgc_errors(const float* grad, const float* scale, const float* u, const float* v, std::size_t n,
                       float momentum, bool nesterov, std::size_t samples, std::size_t top, std::size_t count,
                       double* errors, LgrecoWorkspace& w, void* stream) {
  const cudaStream_t s = as_stream(stream);
  if (n == 0 || samples == 0) {
    GRADCOMM_CUDA_OK(cudaMemsetAsync(errors, 0, count * sizeof(double), s), "zeroing an empty layer's errors");
    return;
  }
  const std::size_t stride = n / samples;
  if (nesterov) {
    dgc_sum_squares<true><<<kPartials, kThreadsPerBlock, 0, s>>>(grad, scale, u, v, n, momentum, w.partials());
    dgc_sample<true><<<grid_blocks(samples), kThreadsPerBlock, 0, s>>>(grad, scale, u, v, stride, samples, momentum,
                                                                       w.samples());
  } else {
    dgc_sum_squares<false><<<kPartials, kThreadsPerBlock, 0, s>>>(grad, scale, u, v, n, momentum, w.partials());
    dgc_sample<false><<<grid_blocks(samples), kThreadsPerBlock, 0, s>>>(grad, scale, u, v, stride, samples,
                                                                        momentum, w.samples());
  }
  check_launch("L-GreCo DGC sample");
  std::size_t bytes = w.temp_bytes();
  GRADCOMM_CUDA_OK(cub::DeviceRadixSort::SortKeysDescending(w.temp(), bytes, w.samples(), w.sorted(),
                                                            static_cast<int>(samples), 0, 32, s),
                   "sorting ", samples, " samples");
  dgc_finish<<<1, kThreadsPerBlock, 0, s>>>(w.partials(), w.sorted(), top, n, samples, w.densities(), count,
                                            errors);
  check_launch("L-GreCo DGC errors");
}

void lgreco_set_densities(LgrecoWorkspace& w, const double* densities, std::size_t count, void* stream) {
  GRADCOMM_CHECK_ARG(count <= kMaxCandidates, "lgreco_set_densities: ", count, " densities");
  if (count == 0) return;
  GRADCOMM_CUDA_OK(cudaMemcpyAsync(w.densities(), densities, count * sizeof(double), cudaMemcpyHostToDevice,
                                   as_stream(stream)),
                   "copying the densities");
  GRADCOMM_CUDA_OK(cudaStreamSynchronize(as_stream(stream)), "copying the densities");
}

}  // namespace gradcomm::kernels::cuda
