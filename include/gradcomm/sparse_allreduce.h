// The sparse allreduce with bounded volume (docs/algorithms/sparse-allreduce.md).
//
// Every rank holds a sparse list of (index, value) entries of one layer (DGC's local top-k).
// The index space is cut into p regions, balanced by where the ranks' entries fall; rank r
// owns region r. Each rank sends the entries of region r to rank r (an alltoallv), the
// owner sums them by index and keeps the largest `quota` sums of its region (ties to the
// lower index), and an allgatherv delivers every owner's kept sums to every rank. A rank
// sends about k entries and receives about k sums whatever p is, where the allgather of
// every rank's k entries receives (p - 1) k.
//
// The Exchanger runs the same algorithm as a multi-phase collective for layers whose
// compressor asks for Collective::kSparseAllreduce (DGC with SparseExchange); this header
// is the standalone form over a Communicator, and the region arithmetic both share.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace gradcomm {

class Communicator;

// The index space [0, numel) of one layer cut into p regions, rank r owning region r, and
// how many summed entries each owner keeps. Identical on every rank.
struct SparseRegions {
  std::vector<std::size_t> bounds;  // p + 1 offsets: region r is [bounds[r], bounds[r + 1])
  // p entries: region r keeps at most quotas[r] sums. Every region with elements keeps at
  // least one; the rest of `select` is shared out (docs/algorithms/sparse-allreduce.md).
  std::vector<std::size_t> quotas;
  std::size_t numel = 0;
  std::size_t select = 0;  // the selection size asked for (k)

  int world_size() const noexcept { return static_cast<int>(quotas.size()); }
  // The sum of the quotas, max(select, regions with elements): the most entries delivered.
  std::size_t kept() const;
  // The region holding `index` (< numel).
  int owner(std::size_t index) const;
};

// Regions of equal width; each keeps one sum and a share of the rest of `select`
// proportional to its width.
SparseRegions uniform_sparse_regions(std::size_t numel, std::size_t select, int world_size);

// Bins of the index histogram the regions are balanced on: min(numel, 16 p), at least 1.
std::size_t sparse_histogram_bins(std::size_t numel, int world_size);
// Adds one to the bin of each index (< numel) in `histogram` (sparse_histogram_bins entries).
void add_to_sparse_histogram(std::span<const std::uint32_t> indices, std::size_t numel,
                             std::span<std::uint32_t> histogram);
// Regions whose boundaries sit at the bin edges where the cumulative count of `histogram`
// (summed over ranks) is nearest to r/p of the total; each region with elements keeps one
// sum and a share of the rest of `select` proportional to the entries that fell into it.
// An empty histogram gives uniform regions.
SparseRegions balanced_sparse_regions(std::span<const std::uint32_t> histogram, std::size_t numel,
                                      std::size_t select, int world_size);

// Collective: regions balanced on every rank's `indices` (ascending, < numel), agreed by
// one allreduce of their histogram (sparse_histogram_bins uint32 words).
SparseRegions agree_sparse_regions(Communicator& comm, std::size_t numel, std::size_t select,
                                   std::span<const std::uint32_t> indices);

struct SparseSelection {
  std::vector<std::uint32_t> indices;  // ascending
  std::vector<float> sums;             // the sum over ranks of their values at indices[i]
  std::uint64_t wire_bytes = 0;        // bytes this rank sent (the Communicator's model)
  std::uint64_t collectives = 0;
};

// Collective, blocking: sums every rank's entries (`indices` strictly ascending and
// < numel, one value each, any number of them) by index and keeps, in each region r, the quotas[r] largest sums by magnitude, ties to the lower
// index. Sums are added in rank order on the region's owner, so every rank receives
// bitwise the same selection. Throws gradcomm::Error (kInvalidArgument) for unsorted or
// out-of-range indices and (kCorruptPayload) when a peer's entries are malformed.
SparseSelection sparse_allreduce(Communicator& comm, std::size_t numel,
                                 std::span<const std::uint32_t> indices, std::span<const float> values,
                                 const SparseRegions& regions);

}  // namespace gradcomm
