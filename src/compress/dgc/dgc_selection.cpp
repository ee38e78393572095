// DgcCompressor with the sparse allreduce (SparseExchange::kReduceScatter): the layer's
// exchange setting, and decode_selection, where the global selection comes back and the
// error feedback settles what this rank sent (docs/algorithms/sparse-allreduce.md, "DGC").

#include <cstring>

#include "gradcomm/dgc.h"
#include "kernels/shared/dgc_math.h"

namespace gradcomm {

SparseExchange DgcCompressor::layer_exchange(std::size_t layer) const { return layers_.at(layer).exchange; }

bool DgcCompressor::set_layer_exchange(std::size_t layer, SparseExchange exchange) {
  GRADCOMM_CHECK_ARG(layer < layers_.size(), "DgcCompressor::set_layer_exchange: layer ", layer, " out of range (",
                     layers_.size(), " layers)");
  Layer& l = layers_[layer];
  if (l.dense_always) return false;
  // Switching between sparse exchanges keeps u and v as they are (both are per rank in
  // either); switching to or from dense goes through the flush of encode_dense, as a
  // density change does.
  l.exchange = exchange;
  return true;
}

// Own entries the selection kept left v at encode and are now in everyone's update: their
// momentum is masked here (paper Eq. 9, deferred from packing). Own entries it dropped go
// back into v, so the next steps send them again: nothing is lost.
void DgcCompressor::decode_selection(std::size_t layer, TensorView own_payload, TensorView indices,
                                     TensorView sums, TensorView out) {
  Layer& l = checked_layer("decode_selection", layer, out, "output");
  float* dst = out.span<float>("DgcCompressor output").data();
  const std::size_t kk = k_for(l, density_of(l));
  GRADCOMM_CHECK(wire(layer).collective == Collective::kSparseAllreduce &&
                     own_payload.nbytes() == sparse_payload_bytes(kk),
                 ErrorCode::kInvalidArgument, "DgcCompressor::decode_selection rank ", rank_, " layer ", layer,
                 ": the layer does not go through the sparse allreduce this step, or its payload ",
                 own_payload.describe(), " is not this step's (", kk, " slots)");
  const auto kept = indices.span<const std::uint32_t>("DgcCompressor selected indices");
  const auto kept_sums = sums.span<const float>("DgcCompressor selected sums");
  GRADCOMM_CHECK(kept.size() == kept_sums.size() && kept.size() <= l.numel, ErrorCode::kCorruptPayload,
                 "DgcCompressor::decode_selection rank ", rank_, " layer ", layer, ": ", kept.size(),
                 " indices and ", kept_sums.size(), " sums for a layer of ", l.numel, " elements");
  for (std::size_t j = 0; j < kept.size(); ++j) {
    GRADCOMM_CHECK(kept[j] < l.numel && (j == 0 || kept[j] > kept[j - 1]), ErrorCode::kCorruptPayload,
                   "DgcCompressor::decode_selection rank ", rank_, " layer ", layer, ": selected index ", kept[j],
                   " at ", j, " (layer has ", l.numel, " elements; indices must increase)");
  }
  const auto* base = static_cast<const std::uint8_t*>(own_payload.data());
  const std::uint32_t count = kernels::dgc::payload_count(base);
  GRADCOMM_CHECK(count <= kk, ErrorCode::kInvalidArgument, "DgcCompressor::decode_selection rank ", rank_,
                 " layer ", layer, ": own payload claims ", count, " entries in ", kk, " slots");
  std::memset(dst, 0, l.numel * sizeof(float));
  const float inv = 1.0f / static_cast<float>(world_size_);
  for (std::size_t j = 0; j < kept.size(); ++j) dst[kept[j]] = kept_sums[j] * inv;

  const bool half = options_.value_dtype == DType::kFloat16;
  std::size_t s = 0;
  for (std::size_t j = 0; j < count; ++j) {
    const std::uint32_t i = kernels::dgc::payload_index(base, j);
    while (s < kept.size() && kept[s] < i) ++s;
    if (s < kept.size() && kept[s] == i) {
      if (options_.momentum_masking) l.u[i] = 0.0f;
    } else {
      l.v[i] += kernels::dgc::payload_value(base, kk, j, half);
    }
  }
}

}  // namespace gradcomm
