// DgcCompressor::decode: every received payload is checked before the first write, then
// averaged into the output (and, for dense layers, through the momentum). A CUDA layer's
// checks and sums run on its device (dgc_device.h), with the same rules and order.

#include <cstring>

#include "compress/device_status.h"
#include "compress/dgc/dgc_device.h"
#include "gradcomm/dgc.h"
#include "kernels/cpu/dense_kernels.h"
#include "kernels/cpu/dgc_kernels.h"

namespace gradcomm {

namespace dgc = kernels::dgc;

void DgcCompressor::decode(std::size_t layer, TensorView received, TensorView out) {
  Layer& l = checked_layer("decode", layer, out, "output");
  GRADCOMM_CHECK(out.dtype() == DType::kFloat32, ErrorCode::kInvalidArgument, "DgcCompressor::decode rank ",
                 rank_, " layer ", layer, ": output ", out.describe(), ", expected float32");
  GRADCOMM_CHECK(received.device() == l.device || received.empty(), ErrorCode::kInvalidArgument,
                 "DgcCompressor::decode rank ", rank_, " layer ", layer, ": received ", received.describe(),
                 " is not on the layer's device (", device_name(l.device), ")");
  auto* dst = static_cast<float*>(out.data());
  GRADCOMM_CHECK(wire(layer).collective != Collective::kSparseAllreduce, ErrorCode::kInvalidArgument,
                 "DgcCompressor::decode rank ", rank_, " layer ", layer,
                 ": the layer goes through the sparse allreduce this step; its result comes to decode_selection");
  if (is_sparse(layer)) {
    decode_sparse(layer, l, received, dst);
  } else {
    decode_dense(layer, l, received, dst);
  }
}

void DgcCompressor::decode_dense(std::size_t index, Layer& l, TensorView received, float* out) {
  GRADCOMM_CHECK(received.numel() == l.numel && received.dtype() == options_.dense_dtype,
                 ErrorCode::kCorruptPayload, "DgcCompressor::decode rank ", rank_,
                 ": dense layer of ", l.numel, " elements received ", received.describe(),
                 ", expected ", dtype_name(options_.dense_dtype));
  const float inv = 1.0f / static_cast<float>(world_size_);
  const bool half = received.dtype() == DType::kFloat16;
  // After a flush the average of everything the ranks had accumulated is the update
  // itself (u is 0); otherwise the momentum follows the average.
  const bool momentum_after = !l.flushing;
  l.flushing = false;
  if (!momentum_after) l.sparse_momentum = false;
  if (l.device == Device::kCuda) {
    device_->decode_dense(index, received.data(), half, inv, out, momentum_after, options_.momentum,
                          options_.nesterov);
    return;
  }
  if (half) {
    kernels::half_to_float_scaled(static_cast<const std::uint16_t*>(received.data()), inv, out,
                                  l.numel);
  } else {
    kernels::scale(static_cast<const float*>(received.data()), inv, out, l.numel);
  }
  if (momentum_after) {
    kernels::dgc_dense_momentum(out, l.u.data(), l.numel, options_.momentum, options_.nesterov);
  }
}

void DgcCompressor::decode_sparse(std::size_t index, const Layer& l, TensorView received,
                                  float* out) {
  const std::size_t kk = k_for(l, density_of(l));
  const std::size_t block = sparse_payload_bytes(kk);
  const std::size_t p = static_cast<std::size_t>(world_size_);
  GRADCOMM_CHECK(received.dtype() == DType::kUInt8 && received.numel() == p * block,
                 ErrorCode::kCorruptPayload, "DgcCompressor::decode rank ", rank_, " layer ", index,
                 ": received ", received.describe(), ", expected ", p, " x ", block,
                 " bytes (k=", kk, " slots per rank)");
  const auto* all = static_cast<const std::uint8_t*>(received.data());
  const bool half = options_.value_dtype == DType::kFloat16;
  const float inv = 1.0f / static_cast<float>(world_size_);
  if (l.device == Device::kCuda) {
    const std::uint32_t bad = device_->decode_sparse(index, all, world_size_, block, kk, half, inv, out);
    GRADCOMM_CHECK(bad == detail::DeviceStatus::kNoCorruptRank, ErrorCode::kCorruptPayload, "DgcCompressor::decode rank ", rank_,
                   " layer ", index, ": the payload of rank ", bad, " (", block, " bytes, k=", kk,
                   " slots) claims more than k entries, or holds an index that does not increase, is out of "
                   "the layer's ", l.numel, " elements, or is not the sentinel past its count (the update is "
                   "left 0)");
    return;
  }
  // Validate every rank's block before the first write, so a bad payload leaves `out`
  // untouched and never writes out of bounds.
  for (std::size_t r = 0; r < p; ++r) {
    const std::uint8_t* b = all + r * block;
    const std::uint32_t count = dgc::payload_count(b);
    GRADCOMM_CHECK(count <= kk, ErrorCode::kCorruptPayload, "DgcCompressor::decode rank ", rank_,
                   " layer ", index, ": rank ", r, " claims ", count, " entries in ", kk, " slots");
    for (std::size_t j = 0; j < kk; ++j) {
      GRADCOMM_CHECK(dgc::slot_valid(b, j, count, l.numel), ErrorCode::kCorruptPayload,
                     "DgcCompressor::decode rank ", rank_, " layer ", index, ": rank ", r, " slot ", j,
                     " of ", count, " used holds index ", dgc::payload_index(b, j), " (layer has ", l.numel,
                     " elements; indices must increase, and slots past the count hold the sentinel)");
    }
  }
  std::memset(out, 0, l.numel * sizeof(float));
  for (std::size_t r = 0; r < p; ++r) kernels::dgc_scatter_add(all + r * block, kk, half, inv, out);
}

}  // namespace gradcomm
