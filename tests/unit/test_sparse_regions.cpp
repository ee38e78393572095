// The sparse allreduce's regions: uniform and histogram-balanced boundaries and quotas.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "gradcomm/error.h"
#include "gradcomm/sparse_allreduce.h"

namespace gradcomm {
namespace {

std::size_t sum(const std::vector<std::size_t>& v) { return std::accumulate(v.begin(), v.end(), std::size_t{0}); }

TEST(SparseRegions, UniformCoversTheLayerAndSharesTheSelection) {
  for (int p : {1, 2, 3, 4, 7, 8}) {
    for (std::size_t n : {std::size_t{1}, std::size_t{5}, std::size_t{1000}, std::size_t{1001}}) {
      const std::size_t select = std::min<std::size_t>(n, 10);
      const SparseRegions r = uniform_sparse_regions(n, select, p);
      ASSERT_EQ(r.bounds.size(), static_cast<std::size_t>(p) + 1);
      EXPECT_EQ(r.bounds.front(), 0u);
      EXPECT_EQ(r.bounds.back(), n);
      EXPECT_TRUE(std::is_sorted(r.bounds.begin(), r.bounds.end()));
      std::size_t holding = 0;
      for (int j = 0; j < p; ++j) {
        if (r.bounds[j] == r.bounds[j + 1]) {
          EXPECT_EQ(r.quotas[j], 0u) << "empty region " << j << " keeps sums";
        } else {
          EXPECT_GE(r.quotas[j], 1u) << "region " << j << " keeps nothing";
          ++holding;
        }
      }
      // One per region with elements, the rest of the selection shared out.
      EXPECT_EQ(sum(r.quotas), std::max(select, holding)) << "p " << p << " n " << n;
      EXPECT_EQ(r.kept(), sum(r.quotas));
      for (std::size_t i = 0; i < n; ++i) {
        const int o = r.owner(i);
        ASSERT_TRUE(r.bounds[o] <= i && i < r.bounds[o + 1]) << i;
      }
    }
  }
}

TEST(SparseRegions, BalancedSplitsAtTheHistogramQuantiles) {
  // 4 ranks, 1000 elements, 64 bins; all mass in bins 0-7 (elements 0..124), evenly.
  const int p = 4;
  const std::size_t n = 1000;
  std::vector<std::uint32_t> h(sparse_histogram_bins(n, p), 0);
  ASSERT_EQ(h.size(), 64u);
  for (std::size_t b = 0; b < 8; ++b) h[b] = 10;
  const SparseRegions r = balanced_sparse_regions(h, n, 40, p);
  // Quartiles of the mass sit at bins 2, 4 and 6: elements ceil(2 * 1000 / 64) = 32, 63, 94.
  EXPECT_EQ(r.bounds, (std::vector<std::size_t>{0, 32, 63, 94, 1000}));
  EXPECT_EQ(r.quotas, (std::vector<std::size_t>{10, 10, 10, 10}));
  // Indices land in the bin that starts at or below them.
  std::vector<std::uint32_t> counted(64, 0);
  const std::vector<std::uint32_t> indices = {0, 15, 16, 31, 32, 999};
  add_to_sparse_histogram(indices, n, counted);
  EXPECT_EQ(counted[0], 2u);   // 0, 15 (bin 0 is [0, 16))
  EXPECT_EQ(counted[1], 2u);   // 16, 31
  EXPECT_EQ(counted[2], 1u);   // 32
  EXPECT_EQ(counted[63], 1u);  // 999
}

TEST(SparseRegions, AllMassInOneBinGoesToOneOwnerAndEveryRegionKeepsOne) {
  const int p = 8;
  const std::size_t n = 100000;
  std::vector<std::uint32_t> h(sparse_histogram_bins(n, p), 0);
  h[5] = 1000;
  const SparseRegions r = balanced_sparse_regions(h, n, 100, p);
  // Boundaries collapse onto the edges of bin 5: regions [0, bin 5), bin 5, [bin 6, n),
  // the others empty. Bin 5 is [ceil(5 n / bins), ceil(6 n / bins)).
  const std::size_t lo = (5 * n + h.size() - 1) / h.size(), hi = (6 * n + h.size() - 1) / h.size();
  std::size_t holding = 0;
  int hot = -1;
  for (int j = 0; j < p; ++j) {
    if (r.bounds[j] == r.bounds[j + 1]) {
      EXPECT_EQ(r.quotas[j], 0u);
      continue;
    }
    ++holding;
    if (r.bounds[j] == lo && r.bounds[j + 1] == hi) hot = j;
  }
  ASSERT_GE(hot, 0) << "no region is exactly bin 5";
  EXPECT_EQ(holding, 3u);
  EXPECT_EQ(r.quotas[hot], 98u);  // 1, and the 97 left after one for each of the 3 regions
  EXPECT_EQ(sum(r.quotas), 100u);
}

TEST(SparseRegions, EmptyHistogramIsUniform) {
  std::vector<std::uint32_t> h(sparse_histogram_bins(500, 3), 0);
  const SparseRegions r = balanced_sparse_regions(h, 500, 9, 3);
  const SparseRegions u = uniform_sparse_regions(500, 9, 3);
  EXPECT_EQ(r.bounds, u.bounds);
  EXPECT_EQ(r.quotas, u.quotas);
}

TEST(SparseRegions, BadArgumentsAreRefused) {
  EXPECT_THROW(uniform_sparse_regions(10, 11, 2), Error);
  EXPECT_THROW(uniform_sparse_regions(10, 1, 0), Error);
  std::vector<std::uint32_t> h(3, 0);
  EXPECT_THROW(balanced_sparse_regions(h, 1000, 1, 4), Error);  // wrong number of bins
  std::vector<std::uint32_t> bins(4, 0);
  const std::vector<std::uint32_t> out_of_range = {10};
  EXPECT_THROW(add_to_sparse_histogram(out_of_range, 10, bins), Error);
}

}  // namespace
}  // namespace gradcomm
