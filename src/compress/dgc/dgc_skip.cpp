// DgcCompressor::on_step_skipped: what a skipped step's payload took out of v goes back.

#include "compress/dgc/dgc_payload.h"
#include "core/float16.h"
#include "gradcomm/dgc.h"

namespace gradcomm {

using detail::kHeaderBytes;
using detail::load_u32;
using detail::load_value;

// A skipped step: v gets back what the payload took out of it (the selected entries, or
// all of v for a flush), so those values are sent in a later step. u is not restored:
// momentum masking cleared it where values were sent, as after any sent value, and a
// plain dense step's momentum already took the update in decode.
void DgcCompressor::on_step_skipped(std::size_t layer, TensorView own_payload) {
  GRADCOMM_CHECK(layer < layers_.size(), ErrorCode::kInvalidArgument, "DgcCompressor::on_step_skipped: layer ",
                 layer, " out of range (", layers_.size(), " layers)");
  Layer& l = layers_[layer];
  const Layer::Taken taken = l.taken;
  l.taken = Layer::Taken::kNothing;  // a second call must not add the values twice
  if (taken == Layer::Taken::kAllOfV) {
    GRADCOMM_CHECK(own_payload.numel() == l.numel && own_payload.dtype() == options_.dense_dtype,
                   ErrorCode::kInvalidArgument, "DgcCompressor::on_step_skipped rank ", rank_, " layer ",
                   layer, ": payload ", own_payload.describe(), " is not the flush of ", l.numel, " elements");
    if (options_.dense_dtype == DType::kFloat16) {
      const auto* sent = static_cast<const std::uint16_t*>(own_payload.data());
      for (std::size_t i = 0; i < l.numel; ++i) l.v[i] += half_to_float(sent[i]);
    } else {
      const auto* sent = static_cast<const float*>(own_payload.data());
      for (std::size_t i = 0; i < l.numel; ++i) l.v[i] += sent[i];
    }
    l.sparse_momentum = true;  // the next dense step flushes v again
    return;
  }
  if (taken != Layer::Taken::kSelected) return;
  // The layout is this step's: a count, k slots of indices, then k values.
  const std::size_t slots = k_for(l, density_of(l));
  const auto* base = static_cast<const std::byte*>(own_payload.data());
  GRADCOMM_CHECK(own_payload.nbytes() == sparse_payload_bytes(slots), ErrorCode::kInvalidArgument,
                 "DgcCompressor::on_step_skipped rank ", rank_, " layer ", layer, ": payload ",
                 own_payload.describe(), " is not this step's (", slots, " slots)");
  const std::uint32_t count = load_u32(base);
  GRADCOMM_CHECK(count <= slots, ErrorCode::kInvalidArgument, "DgcCompressor::on_step_skipped rank ", rank_,
                 " layer ", layer, ": count ", count, " over ", slots, " slots");
  const std::byte* idx = base + kHeaderBytes;
  const std::byte* val = idx + 4 * slots;
  const bool half = options_.value_dtype == DType::kFloat16;
  for (std::size_t j = 0; j < count; ++j) {
    const std::uint32_t i = load_u32(idx + 4 * j);
    GRADCOMM_CHECK(i < l.numel, ErrorCode::kInvalidArgument, "DgcCompressor::on_step_skipped rank ", rank_,
                   " layer ", layer, ": index ", i, " of ", l.numel);
    l.v[i] += load_value(val, j, half);
  }
}

}  // namespace gradcomm
