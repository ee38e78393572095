#include "sparse_allreduce/sparse_group.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "core/float16.h"
#include "gradcomm/communicator.h"
#include "gradcomm/error.h"
#include "kernels/cpu/dgc_kernels.h"
#include "kernels/shared/dgc_math.h"

namespace gradcomm::detail {

namespace {

constexpr std::size_t kCountBytes = 4;  // the slot list's leading uint32 count
constexpr std::uint32_t kSentinel = kernels::dgc::kSentinel;

std::uint32_t load_u32(const std::byte* p) {
  std::uint32_t x;
  std::memcpy(&x, p, sizeof x);
  return x;
}

void store_u32(std::byte* p, std::uint32_t x) { std::memcpy(p, &x, sizeof x); }

float load_entry_value(const std::byte* values, std::size_t j, DType dtype) {
  if (dtype == DType::kFloat16) {
    std::uint16_t h;
    std::memcpy(&h, values + 2 * j, sizeof h);
    return half_to_float(h);
  }
  float x;
  std::memcpy(&x, values + 4 * j, sizeof x);
  return x;
}

std::uint32_t magnitude_bits(float x) { return std::bit_cast<std::uint32_t>(x) & 0x7fffffffu; }

}  // namespace

std::size_t SparseAllreduceGroup::entry_bytes(std::size_t l) const {
  return 4 + dtype_size(layers_[l].value_dtype);
}

void SparseAllreduceGroup::begin(int world_size, int rank, bool refresh,
                                 std::span<const SparseGroupLayer> layers) {
  GRADCOMM_CHECK_ARG(world_size >= 1 && rank >= 0 && rank < world_size, "sparse allreduce: rank ", rank,
                     " of world size ", world_size);
  p_ = world_size;
  rank_ = rank;
  layers_.assign(layers.begin(), layers.end());
  refresh_ = refresh;
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const SparseGroupLayer& layer = layers_[l];
    GRADCOMM_CHECK(layer.regions != nullptr && layer.payload != nullptr && layer.slots <= layer.numel &&
                       layer.select <= layer.numel &&
                       (layer.value_dtype == DType::kFloat32 || layer.value_dtype == DType::kFloat16),
                   ErrorCode::kInvalidArgument, "sparse allreduce on rank ", rank, ": layer '", layer.name,
                   "' (", layer.numel, " elements, ", layer.slots, " slots, values ",
                   dtype_name(layer.value_dtype), ") has no regions or entries, or an unsupported value dtype");
    const std::uint32_t count = load_u32(layer.payload);
    GRADCOMM_CHECK(count <= layer.slots, ErrorCode::kInvalidArgument, "sparse allreduce on rank ", rank,
                   ": layer '", layer.name, "' holds ", count, " entries in ", layer.slots, " slots");
    std::uint64_t previous = 0;
    for (std::size_t j = 0; j < count; ++j) {
      const std::uint32_t i = load_u32(layer.payload + kCountBytes + 4 * j);
      GRADCOMM_CHECK(i < layer.numel && (j == 0 || i > previous), ErrorCode::kInvalidArgument,
                     "sparse allreduce on rank ", rank, ": layer '", layer.name, "' entry ", j, " has index ", i,
                     " (", layer.numel, " elements; indices must be strictly ascending)");
      previous = i;
    }
    const SparseRegions& r = *layer.regions;
    const bool fits = r.world_size() == p_ && r.bounds.size() == static_cast<std::size_t>(p_) + 1 &&
                      r.numel == layer.numel && r.select == layer.select;
    if (!fits) refresh_ = true;
  }
  phase_ = refresh_ ? Phase::kHistogram : Phase::kCounts;
  wire_bytes_ = 0;
  reserve_for_bounds();
}

// What a group of these layers can need at most, reserved once: later steps with more
// entries in a region than before then do not allocate (the buffers only grow when the
// slots or the selection grow, as in a density warm-up).
void SparseAllreduceGroup::reserve_for_bounds() {
  const std::size_t L = layers_.size(), p = static_cast<std::size_t>(p_);
  std::size_t entry_bytes_sum = 0, select = 0, merge = 0, bins = 0;
  for (std::size_t l = 0; l < L; ++l) {
    entry_bytes_sum += layers_[l].slots * entry_bytes(l);
    select += layers_[l].select + p;  // the quotas add up to at most select + p
    merge = std::max(merge, std::min(p * layers_[l].slots, layers_[l].numel * p));
    bins += sparse_histogram_bins(layers_[l].numel, p_);
  }
  auto at_least = [](auto& v, std::size_t n) {
    if (v.capacity() < n) v.reserve(n);
  };
  at_least(send_bytes_, std::max(entry_bytes_sum, 8 * select));
  // An owner receives at most every rank's entries (all in its region).
  at_least(recv_bytes_, std::max(p * entry_bytes_sum, 8 * select));
  at_least(merge_keys_, merge);
  at_least(merge_values_, merge);
  at_least(candidate_indices_, merge);
  at_least(candidate_sums_, merge);
  at_least(select_keys_, merge);
  at_least(select_scratch_, merge);
  at_least(kept_, select);
  at_least(selected_indices_, select);
  at_least(selected_sums_, select);
  at_least(selected_offset_, std::max(L + 1, p + 1));
  at_least(cursor_, p);
  at_least(send_words_, 2 * L * p);
  at_least(recv_words_, 2 * L * p);
  at_least(send_counts_, p);
  at_least(recv_counts_, p);
  at_least(bins_, L);
  at_least(histogram_, bins);
}

SparsePhaseRequest SparseAllreduceGroup::request() {
  SparsePhaseRequest r;
  switch (phase_) {
    case Phase::kHistogram:
      fill_histogram();
      r.collective = Collective::kAllreduce;
      r.send = r.recv = TensorView(histogram_.data(), histogram_.size(), DType::kUInt32);
      wire_bytes_ += allreduce_wire_bytes(4 * histogram_.size(), p_);
      return r;
    case Phase::kCounts:
      fill_counts();
      r.collective = Collective::kAlltoall;
      r.send = TensorView(send_words_.data(), send_words_.size(), DType::kUInt32);
      r.recv = TensorView(recv_words_.data(), recv_words_.size(), DType::kUInt32);
      wire_bytes_ += alltoall_wire_bytes(4 * send_words_.size(), p_);
      return r;
    case Phase::kEntries:
      fill_entries();
      r.collective = Collective::kAlltoallv;
      r.send = TensorView(send_bytes_.data(), send_bytes_.size(), DType::kUInt8);
      r.recv = TensorView(recv_bytes_.data(), recv_bytes_.size(), DType::kUInt8);
      r.send_counts = send_counts_;
      r.recv_counts = recv_counts_;
      wire_bytes_ += alltoallv_wire_bytes(send_counts_, 1, rank_);
      return r;
    case Phase::kSelection:
      r.collective = Collective::kAllgatherv;
      r.send = TensorView(send_bytes_.data(), recv_counts_[static_cast<std::size_t>(rank_)], DType::kUInt8);
      r.recv = TensorView(recv_bytes_.data(), recv_bytes_.size(), DType::kUInt8);
      r.recv_counts = recv_counts_;
      wire_bytes_ += allgather_wire_bytes(r.send.nbytes(), p_);
      return r;
    case Phase::kDone:
      break;
  }
  GRADCOMM_THROW(ErrorCode::kInternal, "sparse allreduce on rank ", rank_, ": no phase left to request");
}

void SparseAllreduceGroup::complete() {
  switch (phase_) {
    case Phase::kHistogram:
      take_histogram();
      phase_ = Phase::kCounts;
      return;
    case Phase::kCounts:
      take_counts();
      phase_ = Phase::kEntries;
      return;
    case Phase::kEntries:
      reduce_entries();
      phase_ = Phase::kSelection;
      return;
    case Phase::kSelection:
      take_selection();
      phase_ = Phase::kDone;
      return;
    case Phase::kDone:
      break;
  }
  GRADCOMM_THROW(ErrorCode::kInternal, "sparse allreduce on rank ", rank_, ": complete() after the last phase");
}

// ---- histogram --------------------------------------------------------------------------

void SparseAllreduceGroup::fill_histogram() {
  bins_.resize(layers_.size());
  std::size_t total = 0;
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    bins_[l] = sparse_histogram_bins(layers_[l].numel, p_);
    total += bins_[l];
  }
  histogram_.assign(total, 0);
  std::size_t at = 0;
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const SparseGroupLayer& layer = layers_[l];
    const std::uint32_t count = load_u32(layer.payload);
    const auto* indices = reinterpret_cast<const std::uint32_t*>(layer.payload + kCountBytes);
    // The payload is 4-byte aligned (the engine's arena, or a vector of words).
    add_to_sparse_histogram(std::span<const std::uint32_t>(indices, count), layer.numel,
                            std::span<std::uint32_t>(histogram_.data() + at, bins_[l]));
    at += bins_[l];
  }
}

void SparseAllreduceGroup::take_histogram() {
  std::size_t at = 0;
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const SparseGroupLayer& layer = layers_[l];
    *layer.regions = balanced_sparse_regions(std::span<const std::uint32_t>(histogram_.data() + at, bins_[l]),
                                             layer.numel, layer.select, p_);
    at += bins_[l];
  }
}

// ---- counts -------------------------------------------------------------------------------

void SparseAllreduceGroup::fill_counts() {
  const std::size_t L = layers_.size(), p = static_cast<std::size_t>(p_);
  send_words_.assign(p * 2 * L, 0);
  recv_words_.assign(p * 2 * L, 0);
  for (std::size_t l = 0; l < L; ++l) {
    const SparseGroupLayer& layer = layers_[l];
    const std::uint32_t count = load_u32(layer.payload);
    const auto* begin = reinterpret_cast<const std::uint32_t*>(layer.payload + kCountBytes);
    const std::uint32_t* at = begin;
    const std::uint32_t* end = begin + count;
    const std::vector<std::size_t>& bounds = layer.regions->bounds;
    for (std::size_t j = 0; j < p; ++j) {
      const std::uint32_t* next =
          j + 1 == p ? end : std::lower_bound(at, end, static_cast<std::uint64_t>(bounds[j + 1]),
                                              [](std::uint32_t i, std::uint64_t b) { return i < b; });
      send_words_[j * 2 * L + l] = static_cast<std::uint32_t>(next - at);
      send_words_[j * 2 * L + L + l] =
          static_cast<std::uint32_t>(std::min<std::size_t>(layer.nonfinite, 0xffffffffu));
      at = next;
    }
  }
}

void SparseAllreduceGroup::take_counts() {
  const std::size_t L = layers_.size(), p = static_cast<std::size_t>(p_);
  send_counts_.assign(p, 0);
  recv_counts_.assign(p, 0);
  const auto me = static_cast<std::size_t>(rank_);
  for (std::size_t r = 0; r < p; ++r) {
    for (std::size_t l = 0; l < L; ++l) {
      const std::uint32_t got = recv_words_[r * 2 * L + l];
      const std::vector<std::size_t>& bounds = layers_[l].regions->bounds;
      GRADCOMM_CHECK(got <= bounds[me + 1] - bounds[me], ErrorCode::kCorruptPayload, "sparse allreduce on rank ",
                     rank_, ": rank ", r, " announces ", got, " entries of layer '", layers_[l].name,
                     "' for a region of ", bounds[me + 1] - bounds[me],
                     " elements (corrupt payload, or ranks out of step)");
      send_counts_[r] += send_words_[r * 2 * L + l] * entry_bytes(l);
      recv_counts_[r] += got * entry_bytes(l);
    }
  }
}

std::uint32_t SparseAllreduceGroup::nonfinite_of(std::size_t l, int r) const {
  const std::size_t L = layers_.size();
  return recv_words_.at(static_cast<std::size_t>(r) * 2 * L + L + l);
}

// ---- entries ------------------------------------------------------------------------------

void SparseAllreduceGroup::fill_entries() {
  const std::size_t L = layers_.size(), p = static_cast<std::size_t>(p_);
  std::size_t send_total = 0, recv_total = 0;
  for (std::size_t r = 0; r < p; ++r) {
    send_total += send_counts_[r];
    recv_total += recv_counts_[r];
  }
  send_bytes_.resize(send_total);
  recv_bytes_.resize(recv_total);
  // Region parts of an ascending list are consecutive runs: copy each run's indices, then
  // its values, straight from the slot list.
  std::byte* out = send_bytes_.data();
  std::vector<std::size_t>& first = selected_offset_;  // reused as the next entry per layer
  first.assign(L, 0);
  for (std::size_t j = 0; j < p; ++j) {
    for (std::size_t l = 0; l < L; ++l) {
      const SparseGroupLayer& layer = layers_[l];
      const std::size_t c = send_words_[j * 2 * L + l];
      const std::size_t vsize = dtype_size(layer.value_dtype);
      const std::byte* indices = layer.payload + kCountBytes;
      const std::byte* values = indices + 4 * layer.slots;
      std::memcpy(out, indices + 4 * first[l], 4 * c);
      out += 4 * c;
      std::memcpy(out, values + vsize * first[l], vsize * c);
      out += vsize * c;
      first[l] += c;
    }
  }
}

void SparseAllreduceGroup::reduce_entries() {
  const std::size_t L = layers_.size(), p = static_cast<std::size_t>(p_);
  const auto me = static_cast<std::size_t>(rank_);
  // Where each rank's part continues in the received bytes.
  std::vector<std::size_t>& cursor = cursor_;
  cursor.assign(p, 0);
  for (std::size_t r = 1; r < p; ++r) cursor[r] = cursor[r - 1] + recv_counts_[r - 1];

  std::size_t out_bytes = 0;
  for (std::size_t l = 0; l < L; ++l) out_bytes += 8 * layers_[l].regions->quotas[me];
  send_bytes_.resize(out_bytes);
  std::byte* out = send_bytes_.data();

  for (std::size_t l = 0; l < L; ++l) {
    const SparseGroupLayer& layer = layers_[l];
    const SparseRegions& regions = *layer.regions;
    const std::size_t lo = regions.bounds[me], hi = regions.bounds[me + 1];
    const std::size_t vsize = dtype_size(layer.value_dtype);
    std::size_t m = 0;
    for (std::size_t r = 0; r < p; ++r) m += recv_words_[r * 2 * L + l];
    GRADCOMM_CHECK(m < (std::uint64_t{1} << 32), ErrorCode::kInvalidArgument, "sparse allreduce on rank ", rank_,
                   ": layer '", layer.name, "' receives ", m, " entries, over the 2^32 one merge can number");
    merge_keys_.resize(m);
    merge_values_.resize(m);
    std::size_t pos = 0;
    for (std::size_t r = 0; r < p; ++r) {
      const std::size_t c = recv_words_[r * 2 * L + l];
      const std::byte* indices = recv_bytes_.data() + cursor[r];
      const std::byte* values = indices + 4 * c;
      std::uint64_t previous = 0;
      for (std::size_t j = 0; j < c; ++j) {
        const std::uint32_t i = load_u32(indices + 4 * j);
        GRADCOMM_CHECK(i >= lo && i < hi && (j == 0 || i > previous), ErrorCode::kCorruptPayload,
                       "sparse allreduce on rank ", rank_, ": rank ", r, " sent entry ", j, " of layer '",
                       layer.name, "' with index ", i, ", outside this rank's region [", lo, ", ", hi,
                       ") or not ascending (corrupt payload, or ranks out of step)");
        previous = i;
        merge_keys_[pos] = (std::uint64_t{i} << 32) | pos;
        merge_values_[pos] = load_entry_value(values, j, layer.value_dtype);
        ++pos;
      }
      cursor[r] += c * (4 + vsize);
    }
    // Sorted by index, then by position: equal indices come in rank order, so the sums
    // add in rank order, the same on whichever rank owns the region.
    if (p > 1) std::sort(merge_keys_.begin(), merge_keys_.end());
    candidate_indices_.resize(m);
    candidate_sums_.resize(m);
    std::size_t candidates = 0;
    for (std::size_t a = 0; a < m;) {
      const auto index = static_cast<std::uint32_t>(merge_keys_[a] >> 32);
      float sum = merge_values_[static_cast<std::uint32_t>(merge_keys_[a])];
      std::size_t b = a + 1;
      for (; b < m && static_cast<std::uint32_t>(merge_keys_[b] >> 32) == index; ++b) {
        sum += merge_values_[static_cast<std::uint32_t>(merge_keys_[b])];
      }
      candidate_indices_[candidates] = index;
      candidate_sums_[candidates] = sum;
      ++candidates;
      a = b;
    }
    // Keep the quota's largest sums, ties to the lower index (the key order of the DGC
    // selection kernel), back in ascending index order.
    const std::size_t quota = regions.quotas[me];
    std::size_t kept = candidates;
    kept_.resize(std::min(candidates, quota));
    if (candidates > quota) {
      select_keys_.resize(candidates);
      select_scratch_.resize(candidates);
      for (std::size_t c = 0; c < candidates; ++c) {
        select_keys_[c] = (std::uint64_t{magnitude_bits(candidate_sums_[c])} << 32) |
                          (0xffffffffu - candidate_indices_[c]);
      }
      kept = kernels::dgc_select_top(select_keys_.data(), candidates, quota, select_scratch_.data(),
                                     kept_.data());
    } else {
      std::copy_n(candidate_indices_.begin(), candidates, kept_.begin());
    }
    std::byte* indices_out = out;
    std::byte* sums_out = out + 4 * quota;
    for (std::size_t a = 0, c = 0; a < kept; ++a) {
      while (candidate_indices_[c] != kept_[a]) ++c;
      store_u32(indices_out + 4 * a, kept_[a]);
      std::memcpy(sums_out + 4 * a, &candidate_sums_[c], 4);
    }
    for (std::size_t a = kept; a < quota; ++a) {
      store_u32(indices_out + 4 * a, kSentinel);
      std::memset(sums_out + 4 * a, 0, 4);
    }
    out += 8 * quota;
  }
  // The selection phase: every owner's block, whose sizes every rank knows from the quotas.
  std::size_t total = 0;
  for (std::size_t r = 0; r < p; ++r) {
    recv_counts_[r] = 0;
    for (std::size_t l = 0; l < L; ++l) recv_counts_[r] += 8 * layers_[l].regions->quotas[r];
    total += recv_counts_[r];
  }
  recv_bytes_.resize(total);
}

// ---- selection -----------------------------------------------------------------------------

void SparseAllreduceGroup::take_selection() {
  const std::size_t L = layers_.size(), p = static_cast<std::size_t>(p_);
  std::size_t most = 0;
  for (std::size_t l = 0; l < L; ++l) most += layers_[l].regions->kept();
  selected_indices_.resize(most);
  selected_sums_.resize(most);
  selected_offset_.assign(L + 1, 0);
  // Offsets of owner blocks, then of each layer within them.
  std::vector<std::size_t>& block = cursor_;
  block.assign(p, 0);
  for (std::size_t r = 1; r < p; ++r) block[r] = block[r - 1] + recv_counts_[r - 1];
  std::size_t n = 0;
  for (std::size_t l = 0; l < L; ++l) {
    const SparseGroupLayer& layer = layers_[l];
    const SparseRegions& regions = *layer.regions;
    selected_offset_[l] = n;
    for (std::size_t r = 0; r < p; ++r) {
      const std::size_t quota = regions.quotas[r];
      const std::byte* indices = recv_bytes_.data() + block[r];
      const std::byte* sums = indices + 4 * quota;
      std::uint64_t previous = 0;
      bool ended = false;
      for (std::size_t a = 0; a < quota; ++a) {
        const std::uint32_t i = load_u32(indices + 4 * a);
        if (i == kSentinel) {
          ended = true;
          continue;
        }
        GRADCOMM_CHECK(!ended && i >= regions.bounds[r] && i < regions.bounds[r + 1] && (a == 0 || i > previous),
                       ErrorCode::kCorruptPayload, "sparse allreduce on rank ", rank_, ": owner ", r,
                       " selected index ", i, " in slot ", a, " of layer '", layer.name, "', outside its region [",
                       regions.bounds[r], ", ", regions.bounds[r + 1],
                       "), not ascending or after the sentinel (corrupt payload, or ranks out of step)");
        previous = i;
        selected_indices_[n] = i;
        std::memcpy(&selected_sums_[n], sums + 4 * a, 4);
        ++n;
      }
      block[r] += 8 * quota;
    }
  }
  selected_offset_[L] = n;
}

std::span<const std::uint32_t> SparseAllreduceGroup::selected_indices(std::size_t l) const {
  return {selected_indices_.data() + selected_offset_[l], selected_offset_[l + 1] - selected_offset_[l]};
}

std::span<const float> SparseAllreduceGroup::selected_sums(std::size_t l) const {
  return {selected_sums_.data() + selected_offset_[l], selected_offset_[l + 1] - selected_offset_[l]};
}

void SparseAllreduceGroup::keep_selected(std::byte* payload, std::size_t slots, DType value_dtype,
                                         std::span<const std::uint32_t> selected) {
  const std::uint32_t count = load_u32(payload);
  const std::size_t vsize = dtype_size(value_dtype);
  std::byte* indices = payload + kCountBytes;
  std::byte* values = indices + 4 * slots;
  std::size_t kept = 0, s = 0;
  for (std::size_t j = 0; j < count; ++j) {
    const std::uint32_t i = load_u32(indices + 4 * j);
    while (s < selected.size() && selected[s] < i) ++s;
    if (s == selected.size() || selected[s] != i) continue;
    store_u32(indices + 4 * kept, i);
    std::memmove(values + vsize * kept, values + vsize * j, vsize);
    ++kept;
  }
  for (std::size_t j = kept; j < count; ++j) {
    store_u32(indices + 4 * j, kSentinel);
    std::memset(values + vsize * j, 0, vsize);
  }
  store_u32(payload, static_cast<std::uint32_t>(kept));
}

}  // namespace gradcomm::detail
