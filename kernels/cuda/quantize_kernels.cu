// One block per bucket: threads own groups of 8 elements (one packed group of `bits`
// bytes each), the bucket's min/max come from a block reduction, then every thread encodes
// and packs its groups. Decode: one thread per group, ranks summed in order.
#include <cuda_runtime.h>

#include <cub/block/block_reduce.cuh>

#include "gradcomm/error.h"
#include "kernels/cuda/quantize_kernels.cuh"

namespace gradcomm::kernels::cuda {
namespace {

namespace q = ::gradcomm::kernels::quant;

constexpr int kThreads = 128;

// min/max are exact, so any reduction order gives the CPU's bits (zeros are canonicalized
// in bucket_meta). Own functors: CCCL 3 dropped cub::Min/cub::Max.
struct MinOp {
  __device__ float operator()(float a, float b) const { return fminf(a, b); }
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

#define GRADCOMM_QUANT_CUDA_CHECK(call, what)                                                  \
  do {                                                                                         \
    const cudaError_t status_ = (call);                                                        \
    GRADCOMM_CHECK(status_ == cudaSuccess, ::gradcomm::ErrorCode::kCuda, "quantize (CUDA) ", \
                   what, ": ", cudaGetErrorString(status_));                                  \
  } while (0)

template <int B, bool Stochastic>
__global__ void quantize_kernel(const float* __restrict__ g, float* __restrict__ residual, std::size_t n,
                                std::size_t bucket, std::uint64_t key, std::uint8_t* __restrict__ payload,
                                unsigned long long* nonfinite) {
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  __shared__ q::BucketMeta meta;
  constexpr int kLevels = (1 << B) - 1;
  const std::size_t b = blockIdx.x;
  const std::size_t start = b * bucket;
  const std::size_t len = min(bucket, n - start);
  const std::size_t groups = (len + 7) / 8;

  // Pass 1: x = finite(g) ? g : 0 (+ residual), overflow zeroed; x is kept in the residual
  // (or recomputed from g without error feedback).
  unsigned long long bad = 0;
  float lo = INFINITY, hi = -INFINITY;
  for (std::size_t i = threadIdx.x; i < len; i += kThreads) {
    const float gi = g[start + i];
    const bool ok = q::finite(gi);
    bad += !ok;
    float x = q::add(ok ? gi : 0.0f, residual ? residual[start + i] : 0.0f);
    if (!q::finite(x)) {
      x = 0.0f;
      bad += 1;
    }
    if (residual) residual[start + i] = x;
    lo = fminf(lo, x);
    hi = fmaxf(hi, x);
  }
  if (bad) atomicAdd(nonfinite, bad);
  lo = Reduce(storage).Reduce(lo, MinOp());
  __syncthreads();
  hi = Reduce(storage).Reduce(hi, MaxOp());
  if (threadIdx.x == 0) {
    meta = q::bucket_meta(lo, hi, B);
    float* m = reinterpret_cast<float*>(payload + q::meta_offset()) + 2 * b;
    m[0] = meta.min;
    m[1] = meta.unit;
    if (b == 0) {
      auto* header = reinterpret_cast<std::uint32_t*>(payload);
      header[0] = q::header_word(B);
      header[1] = static_cast<std::uint32_t>(n);
      // Zero the padding after the last group (written by no block).
      const std::size_t used = (n + 7) / 8 * B, total = q::code_bytes(n, B);
      std::uint8_t* codes = payload + q::codes_offset(n, bucket);
      for (std::size_t i = used; i < total; ++i) codes[i] = 0;
    }
  }
  __syncthreads();
  const q::BucketMeta m = meta;
  const std::uint64_t bkey = Stochastic ? q::bucket_key(key, b) : 0;
  std::uint8_t* codes = payload + q::codes_offset(n, bucket) + start / 8 * B;
  for (std::size_t grp = threadIdx.x; grp < groups; grp += kThreads) {
    std::uint64_t w = 0;
    for (int j = 0; j < 8; ++j) {
      const std::size_t i = 8 * grp + j;
      if (i >= len) break;
      float x;
      if (residual) {
        x = residual[start + i];
      } else {
        const float gi = g[start + i];
        x = q::add(q::finite(gi) ? gi : 0.0f, 0.0f);  // as pass 1 (and the CPU): -0 + 0 = +0
      }
      const float r = Stochastic ? q::uniform(bkey, static_cast<std::uint32_t>(i)) : 0.5f;
      const int code = Stochastic ? q::encode_value(x, m, r, kLevels) : q::encode_unclamped(x, m, r);
      if (residual) residual[start + i] = q::sub(x, q::decode_value(code, m.min, m.unit));
      w |= static_cast<std::uint64_t>(code) << (B * j);
    }
    for (int k = 0; k < B; ++k) codes[grp * B + k] = static_cast<std::uint8_t>(w >> (8 * k));
  }
}

template <int B>
__global__ void dequantize_kernel(const std::uint8_t* __restrict__ payloads, std::size_t stride, int ranks,
                                  std::size_t n, std::size_t bucket, float scale, float* __restrict__ out) {
  const std::size_t grp = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::size_t first = 8 * grp;
  if (first >= n) return;
  const std::size_t b = first / bucket;
  const std::size_t codes_at = q::codes_offset(n, bucket);
  constexpr std::uint64_t kMask = (std::uint64_t{1} << B) - 1;
  float acc[8];
  for (int r = 0; r < ranks; ++r) {
    const std::uint8_t* p = payloads + static_cast<std::size_t>(r) * stride;
    const float* m = reinterpret_cast<const float*>(p + q::meta_offset()) + 2 * b;
    const float min = m[0], unit = m[1];
    std::uint64_t w = 0;
    for (int k = 0; k < B; ++k) w |= static_cast<std::uint64_t>(p[codes_at + grp * B + k]) << (8 * k);
    for (int j = 0; j < 8; ++j) {
      const float v = q::decode_value(static_cast<int>((w >> (B * j)) & kMask), min, unit);
      acc[j] = r == 0 ? v : q::add(acc[j], v);
    }
  }
  for (int j = 0; j < 8 && first + j < n; ++j) out[first + j] = q::mul(acc[j], scale);
}

template <template <int> class Op, typename... Args>
void dispatch_bits(int bits, Args... args) {
  switch (bits) {
    case 1: Op<1>::run(args...); break;
    case 2: Op<2>::run(args...); break;
    case 3: Op<3>::run(args...); break;
    case 4: Op<4>::run(args...); break;
    case 5: Op<5>::run(args...); break;
    case 6: Op<6>::run(args...); break;
    case 7: Op<7>::run(args...); break;
    default: Op<8>::run(args...); break;
  }
}

template <int B>
struct LaunchQuantize {
  static void run(const float* g, float* residual, std::size_t n, QuantizeParams p, std::uint8_t* payload,
                  unsigned long long* nonfinite, cudaStream_t s) {
    const std::size_t blocks = q::num_buckets(n, p.bucket);
    if (blocks == 0) {
      const std::uint32_t header[2] = {q::header_word(B), 0};
      GRADCOMM_QUANT_CUDA_CHECK(cudaMemcpyAsync(payload, header, sizeof header, cudaMemcpyHostToDevice, s),
                                "header of an empty layer");
      return;
    }
    if (p.stochastic) {
      quantize_kernel<B, true><<<static_cast<unsigned>(blocks), kThreads, 0, s>>>(g, residual, n, p.bucket,
                                                                                 p.rng_key, payload, nonfinite);
    } else {
      quantize_kernel<B, false><<<static_cast<unsigned>(blocks), kThreads, 0, s>>>(g, residual, n, p.bucket,
                                                                                  p.rng_key, payload, nonfinite);
    }
  }
};

template <int B>
struct LaunchDequantize {
  static void run(const std::uint8_t* payloads, std::size_t stride, int ranks, std::size_t n, std::size_t bucket,
                  float scale, float* out, cudaStream_t s) {
    const std::size_t groups = (n + 7) / 8;
    if (groups == 0) return;
    const unsigned threads = 256;
    const auto blocks = static_cast<unsigned>((groups + threads - 1) / threads);
    dequantize_kernel<B><<<blocks, threads, 0, s>>>(payloads, stride, ranks, n, bucket, scale, out);
  }
};

}  // namespace

void quantize_error_feedback(const float* g, float* residual, std::size_t n, const QuantizeParams& params,
                             std::uint8_t* payload, unsigned long long* nonfinite, void* stream) {
  GRADCOMM_CHECK_ARG(params.bits >= 1 && params.bits <= 8 && params.bucket >= 8 && params.bucket % 8 == 0,
                     "quantize (CUDA): bits ", params.bits, ", bucket ", params.bucket);
  const auto s = static_cast<cudaStream_t>(stream);
  dispatch_bits<LaunchQuantize>(params.bits, g, residual, n, params, payload, nonfinite, s);
  GRADCOMM_QUANT_CUDA_CHECK(cudaGetLastError(), "quantize kernel launch");
}

void dequantize_sum(const std::uint8_t* payloads, std::size_t stride, int ranks, std::size_t n, int bits,
                    std::size_t bucket, float scale, float* out, void* stream) {
  GRADCOMM_CHECK_ARG(bits >= 1 && bits <= 8 && bucket >= 8 && bucket % 8 == 0 && ranks >= 1,
                     "dequantize (CUDA): bits ", bits, ", bucket ", bucket, ", ranks ", ranks);
  const auto s = static_cast<cudaStream_t>(stream);
  dispatch_bits<LaunchDequantize>(bits, payloads, stride, ranks, n, bucket, scale, out, s);
  GRADCOMM_QUANT_CUDA_CHECK(cudaGetLastError(), "dequantize kernel launch");
}

}  // namespace gradcomm::kernels::cuda
