// Device helpers the .cu files share (nvcc only): block-wide counts, min/max and
// appends, and the last-block step of a grid. Block sizes are multiples of 32.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cub/block/block_scan.cuh>

namespace gradcomm::kernels::cuda {

__device__ __forceinline__ unsigned long long load_volatile(const unsigned long long* p) {
  return *static_cast<const volatile unsigned long long*>(p);
}

// Adds `add` to a 32-bit device word, saturating at 2^32 - 1 (the contract of
// ExecutionContext::nonfinite_counts). Null word: nothing.
__device__ inline void add_saturating(std::uint32_t* word, unsigned long long add) {
  if (add == 0 || word == nullptr) return;
  unsigned int old = *word, assumed;
  do {
    assumed = old;
    const unsigned long long sum = static_cast<unsigned long long>(assumed) + add;
    old = atomicCAS(word, assumed, sum > 0xffffffffull ? 0xffffffffu : static_cast<unsigned>(sum));
  } while (old != assumed);
}

// Block-wide reduction of one value per thread with `op`, every thread gets the result.
// The order is fixed by the block's shape, so a float sum is the same run after run.
template <typename T, typename Op>
__device__ T block_reduce(T value, Op op) {
  __shared__ T partial[32];
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int offset = 16; offset > 0; offset /= 2) value = op(value, __shfl_xor_sync(0xffffffffu, value, offset));
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  const unsigned warps = blockDim.x / 32;
  T total = partial[0];
  for (unsigned w = 1; w < warps; ++w) total = op(total, partial[w]);
  __syncthreads();  // `partial` may be reused by the next call
  return total;
}

struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
// min/max are exact, so any reduction order gives the CPU's bits (the quantizer
// canonicalizes zeros in quant::bucket_meta).
struct MinOp {
  __device__ float operator()(float a, float b) const { return fminf(a, b); }
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// The block's total of `count` added to *word (saturating); every thread calls it.
__device__ inline void block_add_count(unsigned long long count, std::uint32_t* word) {
  const unsigned long long total = block_reduce(count, SumOp());
  if (threadIdx.x == 0) add_saturating(word, total);
}

// Appends `value` of the threads with `take` at positions handed out from *counter: one
// atomic per block. Positions at or past `capacity` are counted but not written. Every
// thread of the block (kThreads of them) calls it in the same round.
template <int kThreads, typename T>
__device__ void block_append(bool take, T value, T* out, unsigned long long* counter,
                             unsigned long long capacity) {
  using Scan = cub::BlockScan<unsigned, kThreads>;
  __shared__ typename Scan::TempStorage storage;
  __shared__ unsigned long long base;
  if (!__syncthreads_or(take)) return;
  unsigned offset = 0, total = 0;
  Scan(storage).ExclusiveSum(take ? 1u : 0u, offset, total);
  if (threadIdx.x == 0) base = atomicAdd(counter, static_cast<unsigned long long>(total));
  __syncthreads();
  if (take && base + offset < capacity) out[base + offset] = value;
  __syncthreads();
}

// True in the last block of the grid to get here, once every other block has finished
// (their global writes then visible): that block takes the step that needs them all.
__device__ inline bool last_block(unsigned int* blocks_done) {
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(blocks_done, 1u) == gridDim.x - 1;
    if (last) *blocks_done = 0;  // ready for the next kernel
  }
  __syncthreads();
  if (last) __threadfence();
  return last;
}

}  // namespace gradcomm::kernels::cuda
