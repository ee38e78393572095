// StepEngine: the sparse allreduce groups (Collective::kSparseAllreduce layers), each a
// run of 3 or 4 collectives (docs/wire-format.md, "Sparse allreduce group").
#include <string>

#include "exchange/step_engine_impl.h"

namespace gradcomm {

bool detail::sparse_wire_ok(const LayerWire& w, std::size_t numel) {
  const bool values_ok = w.value_dtype == DType::kFloat32 || w.value_dtype == DType::kFloat16;
  return w.dtype == DType::kUInt8 && values_ok && w.slots <= numel && w.slots < 0xffffffffu &&
         w.count == align_up(4 + w.slots * (4 + dtype_size(w.value_dtype)));
}

bool StepEngine::waiting_for_phase() const noexcept {
  const Impl& s = *impl_;
  if (!s.in_step || s.next_to_issue == s.slots.size()) return false;
  const Impl::Slot& slot = s.slots[s.next_to_issue];
  return slot.phase > 0 && !s.slots[s.next_to_issue - 1].completed;
}

CollectiveRequest StepEngine::sparse_request(std::size_t id) {
  Impl& s = *impl_;
  const Impl::Slot& slot = s.slots[id];
  const Impl::Group& g = s.groups[slot.group];
  detail::SparseAllreduceGroup& group = s.sparse.group(g.sparse);
  const std::uint64_t before = slot.phase == 0 ? 0 : group.wire_bytes();
  const detail::SparsePhaseRequest r =
      slot.phase == 0
          ? s.sparse.start(
                g.sparse, layers_, s.wire,
                [&](std::size_t layer) -> const std::byte* { return s.send.at(g.send_offset + s.offset_in_block[layer]); },
                [&](std::size_t layer) { return s.local_nonfinite[layer]; })
          : s.sparse.next_request(g.sparse);
  s.stats.wire_bytes += group.wire_bytes() - before;
  s.stats.collectives += 1;
  CollectiveRequest request;
  request.id = id;
  request.collective = r.collective;
  request.send = r.send;
  request.recv = r.recv;
  request.send_counts = r.send_counts;
  request.recv_counts = r.recv_counts;
  return request;
}

void StepEngine::complete_sparse(std::size_t id) {
  Impl& s = *impl_;
  Impl::Group& g = s.groups[s.slots[id].group];
  if (!s.sparse.complete(g.sparse)) return;
  g.completed = true;
  const detail::SparseAllreduceGroup& group = s.sparse.group(g.sparse);
  // Non-finite counts came with the counts phase, one per layer and rank.
  for (std::size_t pos = g.first; pos < g.last; ++pos) {
    for (int r = 0; r < world_size_; ++r) {
      const std::uint32_t bad = group.nonfinite_of(pos - g.first, r);
      if (bad == 0) continue;
      s.bad_layers += 1;
      s.bad_rank[static_cast<std::size_t>(r)] = 1;
      if (s.first_bad.empty()) {
        s.first_bad = "layer '" + layers_[s.order[pos]].name + "' on rank " + std::to_string(r) + " (" +
                      std::to_string(bad) + " elements)";
      }
    }
  }
  for (std::size_t pos = g.first; pos < g.last; ++pos) decode_selected_layer(s.order[pos], s.slots[id].group);
}

void StepEngine::decode_selected_layer(std::size_t layer, std::size_t group_index) {
  Impl& s = *impl_;
  const Impl::Group& g = s.groups[group_index];
  const detail::SparseAllreduceGroup& group = s.sparse.group(g.sparse);
  const std::size_t at = s.position[layer] - g.first;
  const auto indices = group.selected_indices(at);
  const auto sums = group.selected_sums(at);
  const LayerWire& w = s.wire[layer];
  compressor_->decode_selection(
      layer, TensorView(s.send.at(g.send_offset + s.offset_in_block[layer]), w.count, DType::kUInt8),
      TensorView(const_cast<std::uint32_t*>(indices.data()), indices.size(), DType::kUInt32),
      TensorView(const_cast<float*>(sums.data()), sums.size(), DType::kFloat32), decode_target(layer));
  finish_decode(layer);
}

std::vector<std::byte> StepEngine::save_sparse_regions() const { return impl_->sparse.save(); }

void StepEngine::load_sparse_regions(std::span<const std::byte> blob) {
  GRADCOMM_CHECK(!impl_->in_step, ErrorCode::kInvalidArgument, "StepEngine::load_sparse_regions on rank ", rank_,
                 " inside step ", impl_->step, ": finish the step first");
  impl_->sparse.load(blob);
}

}  // namespace gradcomm
