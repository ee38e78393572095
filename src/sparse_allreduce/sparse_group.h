// SparseAllreduceGroup: the sparse allreduce of several layers at once, as a sequence of
// collectives that a driver runs (the StepEngine's multi-phase collective, and the blocking
// sparse_allreduce()). It owns its buffers (grow-only: a step no larger than an earlier
// one allocates nothing) and never communicates itself.
//
// Phases, each one collective over all ranks (docs/algorithms/sparse-allreduce.md):
//   histogram  (only when the regions are refreshed) allreduce of uint32 bins per layer;
//   counts     alltoall of uint32 words: for each destination, the entries of each layer
//              that fall into its region, then this rank's non-finite count of each layer;
//   entries    alltoallv of bytes: for each destination, each layer's entries in its
//              region, as uint32 indices then values (float32 or float16);
//   selection  allgatherv of bytes: each owner's kept sums, per layer quotas[owner] uint32
//              indices (the sentinel 0xffffffff where fewer were kept) then float32 sums.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "gradcomm/compressor.h"
#include "gradcomm/sparse_allreduce.h"
#include "gradcomm/tensor.h"

namespace gradcomm::detail {

// One layer of a group, this step.
struct SparseGroupLayer {
  std::size_t numel = 0;
  std::size_t slots = 0;   // of this rank's slot list
  std::size_t select = 0;  // the most sums the layer keeps (k), the same on every rank
  DType value_dtype = DType::kFloat32;  // of the ranks' entries; sums always travel as float32
  // This rank's entries: uint32 count | uint32 index[slots] | value[slots] (the sparse slot
  // list of docs/wire-format.md); indices strictly ascending below numel.
  const std::byte* payload = nullptr;
  std::size_t nonfinite = 0;  // this rank's non-finite count for the layer
  // The layer's regions, kept by the caller between steps; rewritten on refresh.
  SparseRegions* regions = nullptr;
  const char* name = "";  // for messages
};

struct SparsePhaseRequest {
  Collective collective = Collective::kAlltoall;
  TensorView send, recv;
  std::span<const std::size_t> send_counts, recv_counts;  // alltoallv; allgatherv (recv_counts)
};

class SparseAllreduceGroup {
 public:
  // Starts a group: `refresh` recomputes every layer's regions from this step's entries
  // (it must be the same on every rank). Regions that do not fit the layer (another size,
  // another selection size, another world) are refreshed whatever `refresh` says.
  void begin(int world_size, int rank, bool refresh, std::span<const SparseGroupLayer> layers);
  bool refreshing() const noexcept { return refresh_; }
  // Collectives this group runs: 3, or 4 with a refresh.
  std::size_t phases() const noexcept { return refresh_ ? 4 : 3; }
  bool done() const noexcept { return phase_ == Phase::kDone; }
  // The current phase's collective (its send buffer filled).
  SparsePhaseRequest request();
  // The current phase's collective completed on this rank: consumes what it delivered and
  // moves to the next phase.
  void complete();

  // After done(): layer l's selection (ascending indices, float32 sums over ranks).
  std::span<const std::uint32_t> selected_indices(std::size_t l) const;
  std::span<const float> selected_sums(std::size_t l) const;
  // After the counts phase: rank r's non-finite count for layer l.
  std::uint32_t nonfinite_of(std::size_t l, int r) const;
  std::uint64_t wire_bytes() const noexcept { return wire_bytes_; }

  // Rewrites `payload` (layer l's, as given to begin) to hold only the entries the
  // selection kept, so that what the compressor gives back for a skipped step is what the
  // step actually took (the dropped ones were already given back at decode).
  static void keep_selected(std::byte* payload, std::size_t slots, DType value_dtype,
                            std::span<const std::uint32_t> selected);

 private:
  enum class Phase { kHistogram, kCounts, kEntries, kSelection, kDone };
  void fill_histogram();
  void take_histogram();
  void fill_counts();
  void take_counts();
  void fill_entries();
  void reduce_entries();
  void take_selection();
  std::size_t entry_bytes(std::size_t l) const;
  void reserve_for_bounds();

  int p_ = 1;
  int rank_ = 0;
  bool refresh_ = false;
  Phase phase_ = Phase::kDone;
  std::vector<SparseGroupLayer> layers_;
  std::vector<std::size_t> bins_;        // per layer (histogram phase)
  std::vector<std::uint32_t> histogram_;  // all layers' bins
  std::vector<std::uint32_t> send_words_, recv_words_;  // counts phase: p x 2L each
  std::vector<std::size_t> send_counts_, recv_counts_;  // bytes per rank (entries, selection)
  std::vector<std::size_t> cursor_;                     // per rank, while reading received parts
  std::vector<std::byte> send_bytes_, recv_bytes_;
  // Owner's merge: (index << 32 | position) keys, values as float, candidates.
  std::vector<std::uint64_t> merge_keys_, select_keys_, select_scratch_;
  std::vector<float> merge_values_, candidate_sums_;
  std::vector<std::uint32_t> candidate_indices_, kept_;
  // Selection per layer.
  std::vector<std::size_t> selected_offset_;  // L + 1
  std::vector<std::uint32_t> selected_indices_;
  std::vector<float> selected_sums_;
  std::uint64_t wire_bytes_ = 0;
};

}  // namespace gradcomm::detail
