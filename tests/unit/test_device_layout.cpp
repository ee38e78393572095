// How the CUDA kernels cover their items and lay out their buffers, checked on the CPU
// (the rules are host-callable): issue 13's faults 1, 8 and 11.
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gradcomm/dense.h"
#include "gradcomm/dgc.h"
#include "gradcomm/lgreco.h"
#include "gradcomm/onebit.h"
#include "gradcomm/quantize.h"
#include "kernels/shared/grid.h"
#include "kernels/shared/onebit_math.h"

namespace gradcomm {
namespace {

// Fault 8: a grid capped at max_blocks must still reach every item once, in both loop
// shapes the kernels use (per-thread strides, and block-uniform rounds for the kernels
// whose threads cooperate). Small blocks and caps make n far beyond the grid cheap.
TEST(DeviceLayout, CappedGridsCoverEveryItemOnce) {
  for (const unsigned threads : {1u, 4u, 32u}) {
    for (const unsigned cap : {1u, 3u, 7u}) {
      for (const std::size_t n : {std::size_t{1}, std::size_t{97}, std::size_t{1000}}) {
        const unsigned blocks = kernels::grid_blocks(n, threads, cap);
        ASSERT_GE(blocks, 1u);
        ASSERT_LE(blocks, cap);
        std::vector<int> strided(n, 0), rounds(n, 0);
        for (unsigned b = 0; b < blocks; ++b) {
          for (unsigned t = 0; t < threads; ++t) {
            const kernels::GridStride gs = kernels::grid_stride(b, threads, t, blocks);
            for (std::size_t i = gs.first; i < n; i += gs.stride) strided[i] += 1;
          }
          for (std::size_t r = 0;; ++r) {
            const std::size_t base = kernels::block_round_base(b, threads, blocks, r);
            if (base >= n) break;
            for (unsigned t = 0; t < threads; ++t) {
              if (base + t < n) rounds[base + t] += 1;
            }
          }
        }
        for (std::size_t i = 0; i < n; ++i) {
          ASSERT_EQ(strided[i], 1) << "item " << i << " of " << n << ", " << blocks << " x " << threads;
          ASSERT_EQ(rounds[i], 1) << "item " << i << " of " << n << ", " << blocks << " x " << threads;
        }
      }
    }
  }
  // The old kernels gave each thread one item: past the cap times the block size (about
  // 134M items with 524,280 blocks of 256) items went unwritten. The grid stays capped.
  EXPECT_EQ(kernels::grid_blocks(std::size_t{1} << 40), kernels::kMaxBlocks);
  // Indices are 64-bit: block * threads does not wrap at 2^32.
  const kernels::GridStride far = kernels::grid_stride(0x7fffffffu, 1024, 5, 0x80000000u);
  EXPECT_EQ(far.first, std::size_t{0x7fffffff} * 1024 + 5);
  EXPECT_EQ(far.stride, std::size_t{0x80000000} * 1024);
  EXPECT_EQ(kernels::block_round_base(3, 256, 4096, std::size_t{1} << 22),
            ((std::size_t{1} << 22) * 4096 + 3) * 256);
}

// Fault 11: the quantizer gave every bucket 128 threads whatever its size (a 64-element
// bucket left half idle) and packed with bucket/8 threads. Now a block has one thread per
// element, in whole warps (the packing shuffles within them), at most 256.
TEST(DeviceLayout, QuantizeBlocksFitTheBucket) {
  EXPECT_EQ(kernels::threads_for_bucket(8), 32u);
  EXPECT_EQ(kernels::threads_for_bucket(64), 64u);
  EXPECT_EQ(kernels::threads_for_bucket(72), 96u);
  EXPECT_EQ(kernels::threads_for_bucket(512), 256u);
  EXPECT_EQ(kernels::threads_for_bucket(std::size_t{1} << 20), 256u);
  for (std::size_t bucket = 8; bucket <= 4096; bucket += 8) {
    const unsigned threads = kernels::threads_for_bucket(bucket);
    ASSERT_EQ(threads % 32, 0u) << bucket;
    ASSERT_TRUE(threads >= bucket || threads == kernels::kThreadsPerBlock) << bucket;
  }
}

// Fault 1: the GPU bench laid out a 1-bit segment as 4 + padded/ranks/8 bytes, not rounded
// to 4; at n = 25,557,032 over 4 ranks the next segment's scale landed on an odd address.
// The bench, the allreduce and the tests now share onebit::segment_bytes.
TEST(DeviceLayout, OneBitSegmentsKeepScalesAligned) {
  const std::size_t n = 25557032;
  const int ranks = 4;
  const std::size_t padded = kernels::onebit::padded_numel(n, ranks);
  EXPECT_EQ(padded, onebit_padded_numel(n, ranks));
  EXPECT_NE((4 + padded / ranks / 8) % 4, 0u) << "the case that faulted";
  EXPECT_EQ(kernels::onebit::segment_bytes(padded, ranks) % 4, 0u);
  for (std::size_t m = 1; m < 3000; m += 7) {
    for (int p = 1; p <= 8; ++p) {
      const std::size_t bytes = kernels::onebit::segment_bytes(kernels::onebit::padded_numel(m, p), p);
      ASSERT_EQ(bytes % 4, 0u) << m << " over " << p;
      ASSERT_GE(bytes, 4 + kernels::onebit::padded_numel(m, p) / p / 8);
    }
  }
  EXPECT_EQ(kernels::onebit::segment_bytes(0, 4), 0u);
  // The wire model counts exactly these segments.
  const std::size_t numel[] = {n};
  EXPECT_EQ(onebit_workspace_bytes(numel, ranks), (2 * ranks + 1) * kernels::onebit::segment_bytes(padded, ranks));
}

// A build without CUDA refuses a layer on a CUDA device at setup, naming the option.
TEST(DeviceLayout, CudaLayersNeedACudaBuild) {
#if defined(GRADCOMM_HAVE_CUDA)
  GTEST_SKIP() << "built with CUDA: tests/gpu runs CUDA layers";
#else
  LayerSpec layer{"w", 1000, 2};
  layer.device = Device::kCuda;
  const std::vector<LayerSpec> layers = {layer};
  std::vector<std::unique_ptr<Compressor>> compressors;
  compressors.push_back(std::make_unique<DgcCompressor>());
  compressors.push_back(std::make_unique<QuantizeCompressor>());
  compressors.push_back(std::make_unique<DenseCompressor>());
  compressors.push_back(std::make_unique<LgrecoCompressor>());
  for (auto& c : compressors) {
    try {
      c->setup(layers, 1, 0);
      ADD_FAILURE() << c->name() << " took a CUDA layer without CUDA";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kUnsupported) << c->name();
      EXPECT_NE(std::string(e.what()).find("GRADCOMM_WITH_CUDA=ON"), std::string::npos) << e.what();
    }
  }
#endif
}

}  // namespace
}  // namespace gradcomm
