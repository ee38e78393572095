// CUDA kernels of bucketed k-bit quantization; see quantize_kernels.cuh.
//
// Encode: one block per bucket, as many threads as the bucket has elements (rounded up to
// a warp, at most 256), each thread owning elements tid, tid + threads, ... of it, so
// every load and store of g and the residual is coalesced. The bucket's min and max come
// from a block reduction; each group of 8 codes is gathered by shuffles within 8 lanes
// and its `bits` bytes written by the first `bits` of them.
// Decode: one thread per element, the ranks summed in rank order.
#include <cuda_runtime.h>

#include "kernels/cuda/block_ops.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/quantize_kernels.cuh"
#include "kernels/shared/grid.h"

namespace gradcomm::kernels::cuda {
namespace {

namespace q = ::gradcomm::kernels::quant;

template <int B, bool Stochastic>
__global__ void quantize_kernel(const float* __restrict__ g, float* __restrict__ residual, std::size_t n,
                                std::size_t bucket, std::uint64_t key, std::uint8_t* __restrict__ payload,
                                std::uint32_t* nonfinite) {
  constexpr int kLevels = (1 << B) - 1;
  const std::size_t b = blockIdx.x;
  const std::size_t start = b * bucket;
  const std::size_t len = min(bucket, n - start);
  const unsigned threads = blockDim.x;

  // Pass 1: x = the error-fed input, an overflow to Inf zeroed and counted; x is kept in
  // the residual (or recomputed from g without error feedback).
  unsigned long long bad = 0;
  float lo = INFINITY, hi = -INFINITY;
  for (std::size_t i = threadIdx.x; i < len; i += threads) {
    const float gi = g[start + i];
    bad += !is_finite(gi);
    float x = q::error_fed(gi, residual ? residual[start + i] : 0.0f);
    if (!is_finite(x)) {
      x = 0.0f;
      bad += 1;
    }
    if (residual) residual[start + i] = x;
    lo = fminf(lo, x);
    hi = fmaxf(hi, x);
  }
  block_add_count(bad, nonfinite);
  lo = block_reduce(lo, MinOp());
  hi = block_reduce(hi, MaxOp());
  const q::BucketMeta m = q::bucket_meta(lo, hi, B);
  if (threadIdx.x == 0) {
    float* meta = reinterpret_cast<float*>(payload + q::meta_offset()) + 2 * b;
    meta[0] = m.min;
    meta[1] = m.unit;
    if (b == 0) {
      auto* header = reinterpret_cast<std::uint32_t*>(payload);
      header[0] = q::header_word(B);
      header[1] = static_cast<std::uint32_t>(n);
      // The zero bytes after the last group (written by no block).
      const std::size_t used = (n + 7) / 8 * B, total = q::code_bytes(n, B);
      std::uint8_t* codes = payload + q::codes_offset(n, bucket);
      for (std::size_t i = used; i < total; ++i) codes[i] = 0;
    }
  }

  // Pass 2: codes. Rounds are block-uniform (shuffles need every lane); an element past
  // the bucket has code 0, which is also the padding of the last group.
  const std::uint64_t bkey = Stochastic ? q::bucket_key(key, b) : 0;
  std::uint8_t* codes = payload + q::codes_offset(n, bucket) + start / 8 * B;
  const unsigned lane = threadIdx.x % 32, in_group = lane % 8;
  for (std::size_t base = 0; base < len; base += threads) {
    const std::size_t i = base + threadIdx.x;
    int code = 0;
    if (i < len) {
      const float x = residual ? residual[start + i] : q::error_fed(g[start + i], 0.0f);
      const float r = Stochastic ? q::uniform(bkey, static_cast<std::uint32_t>(i)) : 0.5f;
      code = Stochastic ? q::encode_value(x, m, r, kLevels) : q::encode_unclamped(x, m, r);
      if (residual) residual[start + i] = q::residual_after(x, code, m);
    }
    std::uint64_t word = 0;
    for (unsigned j = 0; j < 8; ++j) {
      const int c = __shfl_sync(0xffffffffu, code, (lane & ~7u) + j);
      word |= static_cast<std::uint64_t>(c) << (B * j);
    }
    // Thread tid is element tid of its round (threads is a multiple of 32), so a group's
    // lanes are its 8 elements in order.
    const std::size_t group_first = i - in_group;
    if (group_first < len && in_group < static_cast<unsigned>(B)) {
      codes[group_first / 8 * B + in_group] = static_cast<std::uint8_t>(word >> (8 * in_group));
    }
  }
}

// Every rank's header and padding (one item each) and bucket metadata (one item per
// bucket), the lowest (rank, fault) kept.
__global__ void validate(const std::uint8_t* payloads, std::size_t stride, int ranks, std::size_t n, int bits,
                         std::size_t bucket, std::uint32_t* bad_rank, std::uint32_t* fault) {
  const std::size_t per_rank = q::num_buckets(n, bucket) + 1;
  const std::size_t items = per_rank * static_cast<std::size_t>(ranks);
  const GridStride gs = grid_stride(blockIdx.x, blockDim.x, threadIdx.x, gridDim.x);
  for (std::size_t e = gs.first; e < items; e += gs.stride) {
    const auto r = static_cast<std::uint32_t>(e / per_rank);
    const std::size_t item = e % per_rank;
    const std::uint8_t* p = payloads + r * stride;
    q::PayloadFault found = q::kFaultNone;
    if (item + 1 == per_rank) {
      found = q::header_fault(p, n, bits);
      if (found == q::kFaultNone) found = q::padding_fault(p, n, bits, bucket);
    } else if (!q::bucket_meta_valid(p, item, bits)) {
      found = q::kFaultMeta;
    }
    if (found != q::kFaultNone) {
      atomicMin(bad_rank, r);
      if (fault != nullptr) atomicMin(fault, q::payload_fault_code(r, found));
    }
  }
}

template <int B>
__global__ void dequantize_kernel(const std::uint8_t* __restrict__ payloads, std::size_t stride, int ranks,
                                  std::size_t n, std::size_t bucket, float scale, float* __restrict__ out,
                                  const std::uint32_t* bad_rank, bool accumulate) {
  const bool corrupt = bad_rank != nullptr && *bad_rank != 0xffffffffu;
  const std::size_t codes_at = q::codes_offset(n, bucket);
  const GridStride gs = grid_stride(blockIdx.x, blockDim.x, threadIdx.x, gridDim.x);
  for (std::size_t i = gs.first; i < n; i += gs.stride) {
    if (corrupt) {
      out[i] = 0.0f;
      continue;
    }
    const std::size_t meta_at = q::meta_offset() + 8 * (i / bucket);
    float sum = 0.0f;
    for (int r = 0; r < ranks; ++r) {
      const std::uint8_t* p = payloads + static_cast<std::size_t>(r) * stride;
      const float v = q::decode_value(q::code_at(p + codes_at, i, B), load_f32(p + meta_at),
                                      load_f32(p + meta_at + 4));
      sum = r == 0 ? v : fadd(sum, v);
    }
    const float x = fmul(sum, scale);
    out[i] = accumulate ? fadd(out[i], x) : x;
  }
}

__global__ void empty_layer_header(std::uint8_t* payload, std::uint32_t header) {
  reinterpret_cast<std::uint32_t*>(payload)[0] = header;
  reinterpret_cast<std::uint32_t*>(payload)[1] = 0;
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
                  std::uint32_t* nonfinite, cudaStream_t s) {
    const std::size_t blocks = q::num_buckets(n, p.bucket);
    if (blocks == 0) {
      empty_layer_header<<<1, 1, 0, s>>>(payload, q::header_word(B));  // count 0
      return;
    }
    GRADCOMM_CHECK_ARG(blocks <= 0x7fffffffu, "quantize (CUDA): ", blocks, " buckets in one layer");
    const unsigned threads = threads_for_bucket(p.bucket);
    if (p.stochastic) {
      quantize_kernel<B, true><<<static_cast<unsigned>(blocks), threads, 0, s>>>(g, residual, n, p.bucket,
                                                                                 p.rng_key, payload, nonfinite);
    } else {
      quantize_kernel<B, false><<<static_cast<unsigned>(blocks), threads, 0, s>>>(g, residual, n, p.bucket,
                                                                                  p.rng_key, payload, nonfinite);
    }
  }
};

template <int B>
struct LaunchDequantize {
  static void run(const std::uint8_t* payloads, std::size_t stride, int ranks, std::size_t n, std::size_t bucket,
                  float scale, float* out, const std::uint32_t* bad_rank, bool accumulate, cudaStream_t s) {
    if (n == 0) return;
    dequantize_kernel<B><<<grid_blocks(n), kThreadsPerBlock, 0, s>>>(payloads, stride, ranks, n, bucket, scale,
                                                                     out, bad_rank, accumulate);
  }
};

}  // namespace

void quantize_error_feedback(const float* g, float* residual, std::size_t n, const QuantizeParams& params,
                             std::uint8_t* payload, std::uint32_t* nonfinite, void* stream) {
  GRADCOMM_CHECK_ARG(params.bits >= 1 && params.bits <= 8 && params.bucket >= 8 && params.bucket % 8 == 0,
                     "quantize (CUDA): bits ", params.bits, ", bucket ", params.bucket);
  GRADCOMM_CHECK_ARG(reinterpret_cast<std::uintptr_t>(payload) % 4 == 0,
                     "quantize (CUDA): the payload must be 4-byte aligned");
  dispatch_bits<LaunchQuantize>(params.bits, g, residual, n, params, payload, nonfinite, as_stream(stream));
  check_launch("quantize kernel");
}

void find_corrupt_payload(const std::uint8_t* payloads, std::size_t stride, int ranks, std::size_t n, int bits,
                          std::size_t bucket, std::uint32_t* bad_rank, std::uint32_t* fault, void* stream) {
  GRADCOMM_CHECK_ARG(bits >= 1 && bits <= 8 && bucket >= 8 && bucket % 8 == 0 && ranks >= 1,
                     "quantize validation (CUDA): bits ", bits, ", bucket ", bucket, ", ranks ", ranks);
  const std::size_t items = (q::num_buckets(n, bucket) + 1) * static_cast<std::size_t>(ranks);
  validate<<<grid_blocks(items), kThreadsPerBlock, 0, as_stream(stream)>>>(payloads, stride, ranks, n, bits,
                                                                           bucket, bad_rank, fault);
  check_launch("quantize validation");
}

void dequantize_sum(const std::uint8_t* payloads, std::size_t stride, int ranks, std::size_t n, int bits,
                    std::size_t bucket, float scale, float* out, const std::uint32_t* bad_rank, bool accumulate,
                    void* stream) {
  GRADCOMM_CHECK_ARG(bits >= 1 && bits <= 8 && bucket >= 8 && bucket % 8 == 0 && ranks >= 1,
                     "dequantize (CUDA): bits ", bits, ", bucket ", bucket, ", ranks ", ranks);
  dispatch_bits<LaunchDequantize>(bits, payloads, stride, ranks, n, bucket, scale, out, bad_rank, accumulate,
                                  as_stream(stream));
  check_launch("dequantize kernel");
}

}  // namespace gradcomm::kernels::cuda
