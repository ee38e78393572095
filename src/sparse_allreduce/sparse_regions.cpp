// The regions of the sparse allreduce: where each owner's part of the index space starts
// and how many sums it keeps. Pure integer arithmetic on values every rank shares, so
// every rank computes the same regions.
#include <algorithm>
#include <numeric>

#include "gradcomm/communicator.h"
#include "gradcomm/error.h"
#include "gradcomm/sparse_allreduce.h"

namespace gradcomm {

namespace {

// Splits `total` into shares proportional to `weights` (largest remainder, ties to the
// lower position); equal shares when every weight is 0.
std::vector<std::size_t> apportion(std::size_t total, std::span<const std::size_t> weights) {
  const std::size_t n = weights.size();
  std::vector<std::size_t> shares(n, 0);
  if (n == 0) return shares;
  const unsigned __int128 sum = std::accumulate(weights.begin(), weights.end(), static_cast<unsigned __int128>(0));
  if (sum == 0) {
    for (std::size_t i = 0; i < n; ++i) shares[i] = total / n + (i < total % n ? 1 : 0);
    return shares;
  }
  std::vector<unsigned __int128> remainder(n);
  std::size_t given = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const unsigned __int128 scaled = static_cast<unsigned __int128>(total) * weights[i];
    shares[i] = static_cast<std::size_t>(scaled / sum);
    remainder[i] = scaled % sum;
    given += shares[i];
  }
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return remainder[a] > remainder[b]; });
  for (std::size_t i = 0; given < total; ++i, ++given) shares[order[i % n]] += 1;
  return shares;
}

// Quotas: one for every region with elements, so that no region waits for the next
// refresh to send anything (a region without quota would pile its ranks' entries up in
// their residuals, and release them in one burst later), then the rest of `select` in
// proportion to `weights`. They add up to max(select, regions with elements).
std::vector<std::size_t> region_quotas(std::size_t select, std::span<const std::size_t> widths,
                                       std::span<const std::size_t> weights) {
  const std::size_t holding = static_cast<std::size_t>(
      std::count_if(widths.begin(), widths.end(), [](std::size_t w) { return w > 0; }));
  std::vector<std::size_t> weighted(weights.begin(), weights.end());
  for (std::size_t j = 0; j < widths.size(); ++j) {
    if (widths[j] == 0) weighted[j] = 0;
  }
  std::vector<std::size_t> quotas = apportion(select > holding ? select - holding : 0, weighted);
  for (std::size_t j = 0; j < widths.size(); ++j) {
    if (widths[j] > 0) quotas[j] += 1;
  }
  return quotas;
}

void check_world(int world_size, const char* what) {
  GRADCOMM_CHECK_ARG(world_size >= 1, what, ": world size ", world_size, " < 1");
}

// Where bin `e` of `bins` over [0, numel) starts: the first index i with i * bins / numel >= e.
std::size_t bin_edge(std::size_t e, std::size_t bins, std::size_t numel) {
  return static_cast<std::size_t>((static_cast<unsigned __int128>(e) * numel + bins - 1) / bins);
}

}  // namespace

std::size_t SparseRegions::kept() const { return std::accumulate(quotas.begin(), quotas.end(), std::size_t{0}); }

int SparseRegions::owner(std::size_t index) const {
  GRADCOMM_CHECK(index < numel && bounds.size() == quotas.size() + 1, ErrorCode::kInvalidArgument,
                 "SparseRegions::owner: index ", index, " outside a layer of ", numel, " elements");
  // The last region whose start is at or below the index (empty regions share a start).
  const auto it = std::upper_bound(bounds.begin(), bounds.end() - 1, index);
  return static_cast<int>(it - bounds.begin()) - 1;
}

SparseRegions uniform_sparse_regions(std::size_t numel, std::size_t select, int world_size) {
  check_world(world_size, "uniform_sparse_regions");
  GRADCOMM_CHECK_ARG(select <= numel, "uniform_sparse_regions: select ", select, " > numel ", numel);
  const auto p = static_cast<std::size_t>(world_size);
  SparseRegions r;
  r.numel = numel;
  r.select = select;
  r.bounds.resize(p + 1);
  for (std::size_t j = 0; j <= p; ++j) {
    r.bounds[j] = static_cast<std::size_t>(static_cast<unsigned __int128>(j) * numel / p);
  }
  std::vector<std::size_t> widths(p);
  for (std::size_t j = 0; j < p; ++j) widths[j] = r.bounds[j + 1] - r.bounds[j];
  r.quotas = region_quotas(select, widths, widths);
  return r;
}

std::size_t sparse_histogram_bins(std::size_t numel, int world_size) {
  check_world(world_size, "sparse_histogram_bins");
  return std::max<std::size_t>(1, std::min<std::size_t>(numel, 16 * static_cast<std::size_t>(world_size)));
}

void add_to_sparse_histogram(std::span<const std::uint32_t> indices, std::size_t numel,
                             std::span<std::uint32_t> histogram) {
  const std::size_t bins = histogram.size();
  GRADCOMM_CHECK_ARG(bins >= 1 && bins <= std::max<std::size_t>(numel, 1),
                     "add_to_sparse_histogram: ", bins, " bins for ", numel, " elements");
  for (std::uint32_t i : indices) {
    GRADCOMM_CHECK_ARG(i < numel, "add_to_sparse_histogram: index ", i, " outside a layer of ", numel,
                       " elements");
    histogram[static_cast<std::size_t>(std::uint64_t{i} * bins / numel)] += 1;
  }
}

SparseRegions balanced_sparse_regions(std::span<const std::uint32_t> histogram, std::size_t numel,
                                      std::size_t select, int world_size) {
  check_world(world_size, "balanced_sparse_regions");
  const std::size_t bins = histogram.size();
  GRADCOMM_CHECK_ARG(bins == sparse_histogram_bins(numel, world_size), "balanced_sparse_regions: ", bins,
                     " bins, expected ", sparse_histogram_bins(numel, world_size), " for ", numel,
                     " elements and ", world_size, " ranks");
  std::vector<std::uint64_t> cumulative(bins + 1, 0);
  for (std::size_t e = 0; e < bins; ++e) cumulative[e + 1] = cumulative[e] + histogram[e];
  const std::uint64_t total = cumulative[bins];
  if (total == 0 || numel == 0) return uniform_sparse_regions(numel, select, world_size);
  GRADCOMM_CHECK_ARG(select <= numel, "balanced_sparse_regions: select ", select, " > numel ", numel);
  const auto p = static_cast<std::size_t>(world_size);
  // Boundary j sits at the bin edge whose cumulative count is nearest to j/p of the total
  // (compared as p * count against j * total, so no rounding); ties go to the lower edge.
  std::vector<std::size_t> edge(p + 1, 0);
  edge[p] = bins;
  std::size_t e = 0;
  for (std::size_t j = 1; j < p; ++j) {
    const unsigned __int128 target = static_cast<unsigned __int128>(j) * total;
    while (e < bins && static_cast<unsigned __int128>(cumulative[e]) * p < target) ++e;
    if (e > 0) {
      const unsigned __int128 above = static_cast<unsigned __int128>(cumulative[e]) * p - target;
      const unsigned __int128 below = target - static_cast<unsigned __int128>(cumulative[e - 1]) * p;
      if (below <= above && e - 1 >= edge[j - 1]) --e;
    }
    edge[j] = e;
  }
  SparseRegions r;
  r.numel = numel;
  r.select = select;
  r.bounds.resize(p + 1);
  std::vector<std::size_t> mass(p), widths(p);
  for (std::size_t j = 0; j <= p; ++j) r.bounds[j] = bin_edge(edge[j], bins, numel);
  for (std::size_t j = 0; j < p; ++j) {
    mass[j] = cumulative[edge[j + 1]] - cumulative[edge[j]];
    widths[j] = r.bounds[j + 1] - r.bounds[j];
  }
  r.quotas = region_quotas(select, widths, mass);
  return r;
}

SparseRegions agree_sparse_regions(Communicator& comm, std::size_t numel, std::size_t select,
                                   std::span<const std::uint32_t> indices) {
  std::vector<std::uint32_t> histogram(sparse_histogram_bins(numel, comm.size()), 0);
  add_to_sparse_histogram(indices, numel, histogram);
  const TensorView view = TensorView::of(std::span<std::uint32_t>(histogram));
  comm.allreduce(view, view, ReduceOp::kSum)->wait();
  return balanced_sparse_regions(histogram, numel, select, comm.size());
}

}  // namespace gradcomm
