// DgcCompressor::decode: every received payload is checked before the first write, then
// averaged into the output (and, for dense layers, through the momentum).

#include <cstring>

#include "compress/dgc/dgc_payload.h"
#include "gradcomm/dgc.h"
#include "kernels/cpu/dense_kernels.h"
#include "kernels/cpu/dgc_kernels.h"

namespace gradcomm {

using detail::kHeaderBytes;
using detail::load_u32;
using detail::load_value;

void DgcCompressor::decode(std::size_t layer, TensorView received, TensorView out) {
  Layer& l = checked_layer("decode", layer, out, "output");
  float* dst = out.span<float>("DgcCompressor output").data();
  GRADCOMM_CHECK(wire(layer).collective != Collective::kSparseAllreduce, ErrorCode::kInvalidArgument,
                 "DgcCompressor::decode rank ", rank_, " layer ", layer,
                 ": the layer goes through the sparse allreduce this step; its result comes to decode_selection");
  if (is_sparse(layer)) {
    decode_sparse(layer, l, received, dst);
  } else {
    decode_dense(l, received, dst);
  }
}

void DgcCompressor::decode_dense(Layer& l, TensorView received, float* out) {
  GRADCOMM_CHECK(received.numel() == l.numel && received.dtype() == options_.dense_dtype,
                 ErrorCode::kCorruptPayload, "DgcCompressor::decode rank ", rank_,
                 ": dense layer of ", l.numel, " elements received ", received.describe(),
                 ", expected ", dtype_name(options_.dense_dtype));
  const float inv = 1.0f / static_cast<float>(world_size_);
  if (received.dtype() == DType::kFloat16) {
    kernels::half_to_float_scaled(static_cast<const std::uint16_t*>(received.data()), inv, out,
                                  l.numel);
  } else {
    kernels::scale(static_cast<const float*>(received.data()), inv, out, l.numel);
  }
  if (l.flushing) {
    // The average of everything the ranks had accumulated: the update itself (u is 0).
    l.flushing = false;
    l.sparse_momentum = false;
    return;
  }
  kernels::dgc_dense_momentum(out, l.u.data(), l.numel, options_.momentum, options_.nesterov);
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
  const auto* all = static_cast<const std::byte*>(received.data());
  const bool half = options_.value_dtype == DType::kFloat16;
  // Validate every rank's block before the first write, so a bad payload leaves `out`
  // untouched and never writes out of bounds.
  for (std::size_t r = 0; r < p; ++r) {
    const std::byte* b = all + r * block;
    const std::uint32_t count = load_u32(b);
    GRADCOMM_CHECK(count <= kk, ErrorCode::kCorruptPayload, "DgcCompressor::decode rank ", rank_,
                   " layer ", index, ": rank ", r, " claims ", count, " entries in ", kk, " slots");
    const std::byte* idx = b + kHeaderBytes;
    std::uint64_t prev = 0;
    for (std::size_t j = 0; j < kk; ++j) {
      const std::uint32_t i = load_u32(idx + 4 * j);
      if (j < count) {
        GRADCOMM_CHECK(i < l.numel && (j == 0 || i > prev), ErrorCode::kCorruptPayload,
                       "DgcCompressor::decode rank ", rank_, " layer ", index, ": rank ", r,
                       " slot ", j, " has index ", i, " (layer has ", l.numel,
                       " elements; indices must increase)");
        prev = i;
      } else {
        GRADCOMM_CHECK(i == kernels::kDgcSentinel, ErrorCode::kCorruptPayload,
                       "DgcCompressor::decode rank ", rank_, " layer ", index, ": rank ", r,
                       " padding slot ", j, " holds index ", i, " instead of the sentinel");
      }
    }
  }
  std::memset(out, 0, l.numel * sizeof(float));
  const float inv = 1.0f / static_cast<float>(world_size_);
  for (std::size_t r = 0; r < p; ++r) {
    const std::byte* b = all + r * block;
    const std::uint32_t count = load_u32(b);
    const std::byte* idx = b + kHeaderBytes;
    const std::byte* val = idx + 4 * kk;
    for (std::size_t j = 0; j < count; ++j) out[load_u32(idx + 4 * j)] += load_value(val, j, half) * inv;
  }
}

}  // namespace gradcomm
