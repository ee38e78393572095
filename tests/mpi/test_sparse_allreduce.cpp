// sparse_allreduce() over a real MpiCommunicator (2 to 8 ranks). Every rank's entries are a
// pure function of (rank, case), so each rank computes the straightforward reference
// itself: all ranks' entries summed by index in rank order, then in each region the
// quota's largest sums by magnitude, ties to the lower index.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <vector>

#include "gradcomm/mpi_communicator.h"
#include "gradcomm/sparse_allreduce.h"
#include "mpi/mpi_test_util.h"

namespace gradcomm {
namespace {

using testing::all_ranks;
using testing::same_on_all_ranks;
using testing::world_rank;
using testing::world_size;

std::uint64_t mix(std::uint64_t x) {
  x = (x ^ (x >> 33)) * 0xff51afd7ed558ccdull;
  x = (x ^ (x >> 33)) * 0xc4ceb9fe1a85ec53ull;
  return x ^ (x >> 33);
}

struct Entries {
  std::vector<std::uint32_t> indices;
  std::vector<float> values;
};

// About `per_rank` entries of rank r in [lo, hi) of a layer: values are multiples of 1/4
// in [-4, 4) so that sums tie often and the tie rule is exercised.
Entries entries_of(int rank, std::uint64_t seed, std::size_t lo, std::size_t hi, std::size_t per_rank) {
  Entries e;
  const std::size_t width = hi - lo;
  for (std::size_t i = lo; i < hi; ++i) {
    const std::uint64_t h = mix(seed * 0x9e3779b97f4a7c15ull ^ (static_cast<std::uint64_t>(rank) << 40) ^ i);
    if (width == 0 || h % width >= per_rank) continue;
    e.indices.push_back(static_cast<std::uint32_t>(i));
    const float v = static_cast<float>(static_cast<int>((h >> 20) % 32) - 16) * 0.25f;
    e.values.push_back(v == 0.0f ? 0.25f : v);
  }
  return e;
}

// The reference: sums in rank order, then per region the quota's top sums.
std::pair<std::vector<std::uint32_t>, std::vector<float>> reference(const std::vector<Entries>& ranks,
                                                                    const SparseRegions& regions) {
  std::map<std::uint32_t, float> sums;
  for (const Entries& e : ranks) {
    for (std::size_t j = 0; j < e.indices.size(); ++j) {
      auto [it, fresh] = sums.try_emplace(e.indices[j], e.values[j]);
      if (!fresh) it->second += e.values[j];
    }
  }
  std::vector<std::uint32_t> indices;
  std::vector<float> values;
  for (int r = 0; r < regions.world_size(); ++r) {
    std::vector<std::pair<std::uint32_t, float>> in_region;
    for (const auto& [i, s] : sums) {
      if (i >= regions.bounds[r] && i < regions.bounds[r + 1]) in_region.emplace_back(i, s);
    }
    std::stable_sort(in_region.begin(), in_region.end(), [](const auto& a, const auto& b) {
      return std::fabs(a.second) > std::fabs(b.second);  // stable: equal magnitudes keep ascending index
    });
    in_region.resize(std::min(in_region.size(), regions.quotas[r]));
    std::sort(in_region.begin(), in_region.end());
    for (const auto& [i, s] : in_region) {
      indices.push_back(i);
      values.push_back(s);
    }
  }
  return {indices, values};
}

struct Case {
  std::size_t numel, lo, hi, per_rank, select;
  bool balanced;
};

void check_case(MpiCommunicator& comm, const Case& c, std::uint64_t seed) {
  const int p = world_size();
  std::vector<Entries> all;
  for (int r = 0; r < p; ++r) all.push_back(entries_of(r, seed, c.lo, c.hi, c.per_rank));
  const Entries& mine = all[static_cast<std::size_t>(world_rank())];
  const SparseRegions regions = c.balanced ? agree_sparse_regions(comm, c.numel, c.select, mine.indices)
                                           : uniform_sparse_regions(c.numel, c.select, p);
  const SparseSelection got = sparse_allreduce(comm, c.numel, mine.indices, mine.values, regions);
  const auto [indices, sums] = reference(all, regions);
  SCOPED_TRACE(::testing::Message() << "numel " << c.numel << " entries in [" << c.lo << ", " << c.hi << ") about "
                                    << c.per_rank << " per rank, select " << c.select
                                    << (c.balanced ? " balanced" : " uniform"));
  EXPECT_EQ(got.indices, indices);
  ASSERT_EQ(got.sums.size(), sums.size());
  for (std::size_t j = 0; j < sums.size(); ++j) {
    EXPECT_EQ(std::bit_cast<std::uint32_t>(got.sums[j]), std::bit_cast<std::uint32_t>(sums[j])) << "entry " << j;
  }
  // At most the quotas: the selection, or one per region with elements where that is more.
  EXPECT_LE(got.indices.size(), std::max<std::size_t>(c.select, static_cast<std::size_t>(world_size())));
  EXPECT_LE(got.indices.size(), regions.kept());
  EXPECT_TRUE(same_on_all_ranks(got.indices));
  EXPECT_TRUE(same_on_all_ranks(got.sums));
  EXPECT_EQ(got.collectives, 3u);
}

TEST(SparseAllreduce, EqualsTheReference) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const std::size_t p = static_cast<std::size_t>(world_size());
  const std::vector<Case> cases = {
      {10000, 0, 10000, 100, 100, false},  // spread evenly
      {10000, 0, 10000, 100, 100, true},
      {10000, 0, 10000, 300, 100, true},   // heavy overlap between ranks
      {10000, 9000, 9600, 80, 100, true},  // concentrated: most regions empty
      {10000, 0, 10000, 0, 100, true},     // no rank has anything
      {p - 1, 0, p - 1, 1, 1, true},       // a layer smaller than p
      {3, 0, 3, 3, 3, false},
      {5000, 0, 5000, 2, p - 1, true},     // k < p: every region keeps one all the same
      {5000, 0, 5000, 2, 1, false},
      {1, 0, 1, 1, 1, true},
  };
  std::uint64_t seed = 1;
  for (const Case& c : cases) {
    if (c.numel == 0) continue;
    check_case(comm, c, seed++);
  }
}

TEST(SparseAllreduce, RegionsAreAgreedAndBalanced) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int p = world_size();
  const std::size_t numel = 50000;
  // Entries pile up in the first tenth of the layer.
  std::vector<Entries> all;
  std::vector<std::uint32_t> histogram(sparse_histogram_bins(numel, p), 0);
  for (int r = 0; r < p; ++r) {
    all.push_back(entries_of(r, 77, 0, 5000, 400));
    Entries tail = entries_of(r, 78, 5000, numel, 100);
    all.back().indices.insert(all.back().indices.end(), tail.indices.begin(), tail.indices.end());
    all.back().values.insert(all.back().values.end(), tail.values.begin(), tail.values.end());
    add_to_sparse_histogram(all.back().indices, numel, histogram);
  }
  const Entries& mine = all[static_cast<std::size_t>(world_rank())];
  const SparseRegions regions = agree_sparse_regions(comm, numel, 500, mine.indices);
  EXPECT_TRUE(same_on_all_ranks(regions.bounds));
  EXPECT_TRUE(same_on_all_ranks(regions.quotas));
  const SparseRegions local = balanced_sparse_regions(histogram, numel, 500, p);
  EXPECT_EQ(regions.bounds, local.bounds);
  EXPECT_EQ(regions.quotas, local.quotas);
  // Each region holds about 1/p of all entries (within a bin's worth either side).
  std::size_t total = 0;
  for (const Entries& e : all) total += e.indices.size();
  const std::size_t bin = numel / histogram.size() + 1;
  for (int r = 0; r < p; ++r) {
    std::size_t in = 0, bin_most = 0;
    for (const Entries& e : all) {
      for (std::uint32_t i : e.indices) in += i >= regions.bounds[r] && i < regions.bounds[r + 1];
    }
    for (std::size_t b = 0; b < histogram.size(); ++b) bin_most = std::max<std::size_t>(bin_most, histogram[b]);
    EXPECT_LE(std::abs(static_cast<double>(in) - static_cast<double>(total) / p), static_cast<double>(bin_most))
        << "region " << r << " [" << regions.bounds[r] << ", " << regions.bounds[r + 1] << ") bin width " << bin;
  }
}

TEST(SparseAllreduce, VolumeDoesNotGrowWithRanks) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int p = world_size();
  // Every rank holds k entries spread over the layer; the allgather would send (p-1) k slots.
  const std::size_t numel = 200000, k = 400;
  const Entries mine = entries_of(world_rank(), 5, 0, numel, k);
  const SparseRegions regions = agree_sparse_regions(comm, numel, k, mine.indices);
  const SparseSelection got = sparse_allreduce(comm, numel, mine.indices, mine.values, regions);
  // Sent: the entries for other owners (8 bytes each), this rank's kept sums (8 bytes) to
  // the p - 1 others as MPI counts an allgatherv, and the count words.
  const double mine_bytes = 8.0 * static_cast<double>(mine.indices.size());
  const double most = mine_bytes + 8.0 * static_cast<double>(regions.quotas[world_rank()]) * (p - 1) +
                      8.0 * p * p;
  EXPECT_LE(static_cast<double>(got.wire_bytes), most);
  // Summed over ranks, the traffic is about 2 k (p - 1) slots: per rank about 2k, flat in p.
  std::uint64_t sum = got.wire_bytes;
  MPI_Allreduce(MPI_IN_PLACE, &sum, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
  const double per_rank = static_cast<double>(sum) / p;
  EXPECT_LE(per_rank, 2.5 * 8.0 * static_cast<double>(k) + 8.0 * p * p) << "bytes per rank " << per_rank;
}

TEST(SparseAllreduce, BadEntriesAreRefusedOnEveryRank) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const SparseRegions regions = uniform_sparse_regions(100, 10, world_size());
  const std::vector<std::uint32_t> unsorted = {5, 3};
  const std::vector<float> values = {1.0f, 2.0f};
  try {
    sparse_allreduce(comm, 100, unsorted, values, regions);
    ADD_FAILURE() << "unsorted indices accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
  }
  const SparseRegions wrong = uniform_sparse_regions(100, 10, world_size() + 1);
  EXPECT_THROW(sparse_allreduce(comm, 100, {}, {}, wrong), Error);
  EXPECT_TRUE(all_ranks(true));
}

}  // namespace
}  // namespace gradcomm
