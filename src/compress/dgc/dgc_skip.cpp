// DgcCompressor::on_step_skipped: what a skipped step's payload took out of v goes back.

#include "compress/dgc/dgc_device.h"
#include "core/float16.h"
#include "gradcomm/dgc.h"
#include "kernels/shared/dgc_math.h"

namespace gradcomm {

namespace dgc = kernels::dgc;

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
  if (taken == Layer::Taken::kNothing) return;
  GRADCOMM_CHECK(own_payload.device() == l.device || own_payload.empty(), ErrorCode::kInvalidArgument,
                 "DgcCompressor::on_step_skipped rank ", rank_, " layer ", layer, ": payload ",
                 own_payload.describe(), " is not on the layer's device (", device_name(l.device), ")");
  if (taken == Layer::Taken::kAllOfV) {
    GRADCOMM_CHECK(own_payload.numel() == l.numel && own_payload.dtype() == options_.dense_dtype,
                   ErrorCode::kInvalidArgument, "DgcCompressor::on_step_skipped rank ", rank_, " layer ",
                   layer, ": payload ", own_payload.describe(), " is not the flush of ", l.numel, " elements");
    l.sparse_momentum = true;  // the next dense step flushes v again
    const bool half = options_.dense_dtype == DType::kFloat16;
    if (l.device == Device::kCuda) {
      device_->restore_flush(layer, own_payload.data(), half);
      return;
    }
    if (half) {
      const auto* sent = static_cast<const std::uint16_t*>(own_payload.data());
      for (std::size_t i = 0; i < l.numel; ++i) l.v[i] = kernels::fadd(l.v[i], half_to_float(sent[i]));
    } else {
      const auto* sent = static_cast<const float*>(own_payload.data());
      for (std::size_t i = 0; i < l.numel; ++i) l.v[i] = kernels::fadd(l.v[i], sent[i]);
    }
    return;
  }
  // The layout is this step's: a count, k slots of indices, then k values.
  const std::size_t slots = k_for(l, density_of(l));
  const auto* base = static_cast<const std::uint8_t*>(own_payload.data());
  GRADCOMM_CHECK(own_payload.nbytes() == sparse_payload_bytes(slots), ErrorCode::kInvalidArgument,
                 "DgcCompressor::on_step_skipped rank ", rank_, " layer ", layer, ": payload ",
                 own_payload.describe(), " is not this step's (", slots, " slots)");
  const bool half = options_.value_dtype == DType::kFloat16;
  if (l.device == Device::kCuda) {
    device_->restore_selected(layer, base, slots, half);
    return;
  }
  const std::uint32_t count = dgc::payload_count(base);
  GRADCOMM_CHECK(count <= slots, ErrorCode::kInvalidArgument, "DgcCompressor::on_step_skipped rank ", rank_,
                 " layer ", layer, ": count ", count, " over ", slots, " slots");
  for (std::size_t j = 0; j < count; ++j) {
    const std::uint32_t i = dgc::payload_index(base, j);
    GRADCOMM_CHECK(i < l.numel, ErrorCode::kInvalidArgument, "DgcCompressor::on_step_skipped rank ", rank_,
                   " layer ", layer, ": index ", i, " of ", l.numel);
    l.v[i] = kernels::fadd(l.v[i], dgc::payload_value(base, slots, j, half));
  }
}

}  // namespace gradcomm
