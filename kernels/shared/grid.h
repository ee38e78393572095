// How the CUDA kernels cover n items: a capped grid of blocks, each thread striding over
// the items (a grid-stride loop). The cap bounds the launch; the stride makes any n
// covered, however large, with 64-bit indices (a kernel that instead gives each thread
// one item leaves every item past the cap's reach unwritten). Host-callable so the CPU
// tests check the coverage.
#pragma once

#include <cstddef>

#include "core/host_device.h"

namespace gradcomm::kernels {

inline constexpr unsigned kThreadsPerBlock = 256;
// Enough blocks to fill an H100 or H200 several times over (132 or so SMs, 8 blocks of
// 256 threads resident on each); past this, threads loop.
inline constexpr unsigned kMaxBlocks = 4096;

// Blocks for a grid-stride loop over `items`: one per `threads` items, at least 1, at
// most `max_blocks`.
inline unsigned grid_blocks(std::size_t items, unsigned threads = kThreadsPerBlock,
                            unsigned max_blocks = kMaxBlocks) {
  const std::size_t blocks = (items + threads - 1) / threads;
  return blocks == 0 ? 1u : (blocks < max_blocks ? static_cast<unsigned>(blocks) : max_blocks);
}

// Threads for kernels that give a block one quantization bucket: the bucket's elements,
// rounded up to a whole warp, at most kThreadsPerBlock (then threads loop).
inline unsigned threads_for_bucket(std::size_t bucket) {
  const std::size_t threads = (bucket + 31) / 32 * 32;
  return threads < kThreadsPerBlock ? static_cast<unsigned>(threads) : kThreadsPerBlock;
}

// The first item of a thread and the stride of a grid-stride loop, in 64 bits (block *
// threads overflows 32 bits on large grids).
struct GridStride {
  std::size_t first;
  std::size_t stride;
};
GRADCOMM_HOST_DEVICE_INLINE GridStride grid_stride(unsigned block, unsigned threads_per_block,
                                                   unsigned thread, unsigned blocks) {
  return {static_cast<std::size_t>(block) * threads_per_block + thread,
          static_cast<std::size_t>(blocks) * threads_per_block};
}

// Block-uniform rounds of a grid-stride loop, for kernels whose threads cooperate on every
// round (block scans, shuffles): round r covers items [base, base + threads_per_block)
// with base = (r * blocks + block) * threads_per_block; a block runs all its rounds while
// any of its items is below n.
GRADCOMM_HOST_DEVICE_INLINE std::size_t block_round_base(unsigned block, unsigned threads_per_block,
                                                         unsigned blocks, std::size_t round) {
  return (round * blocks + block) * static_cast<std::size_t>(threads_per_block);
}

}  // namespace gradcomm::kernels
