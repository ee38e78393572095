// DgcCompressor::encode: gradient clipping, momentum correction and accumulation, then a
// dense payload (including the flush after sparse steps) or the sparse top-k selection.
// The decisions are made here for both devices; the data work is a CPU kernel or, for a
// CUDA layer, the same kernel's CUDA twin (dgc_device.h).

#include <algorithm>
#include <bit>
#include <cmath>

#include "compress/dgc/dgc_device.h"
#include "gradcomm/dgc.h"
#include "kernels/cpu/dgc_kernels.h"
#include "kernels/shared/splitmix64.h"

namespace gradcomm {

using kernels::splitmix64;

double DgcCompressor::clip_limit() const {
  return options_.clip_norm > 0.0f ? options_.clip_norm / std::sqrt(static_cast<double>(world_size_)) : 0.0;
}

float DgcCompressor::clip_scale(const float* grad, std::size_t n) const {
  const double limit = clip_limit();
  if (limit <= 0.0) return 1.0f;
  return kernels::dgc::clip_factor(kernels::dgc_sum_squares_finite(grad, n), limit);
}

EncodeResult DgcCompressor::encode(std::size_t layer, TensorView grad, TensorView payload) {
  Layer& l = checked_layer("encode", layer, grad, "gradient");
  const LayerWire w = wire(layer);
  GRADCOMM_CHECK(payload.nbytes() == w.bytes() && payload.dtype() == w.dtype,
                 ErrorCode::kSizeMismatch, "DgcCompressor::encode rank ", rank_, " layer ", layer,
                 ": payload ", payload.describe(), ", expected ", w.count, " ", dtype_name(w.dtype),
                 " (epoch ", epoch_, ", density ", density_of(l), ")");
  GRADCOMM_CHECK(payload.device() == l.device || payload.empty(), ErrorCode::kInvalidArgument,
                 "DgcCompressor::encode rank ", rank_, " layer ", layer, ": payload ", payload.describe(),
                 " is not on the layer's device (", device_name(l.device), ")");
  GRADCOMM_CHECK(grad.dtype() == DType::kFloat32, ErrorCode::kInvalidArgument, "DgcCompressor::encode rank ",
                 rank_, " layer ", layer, ": gradient ", grad.describe(), ", expected float32");
  const auto* g = static_cast<const float*>(grad.data());
  if (w.collective == Collective::kAllreduce) return encode_dense(layer, l, g, payload);
  // The sparse allreduce masks momentum in decode_selection, where it knows which of the
  // sent entries the selection kept.
  return encode_sparse(layer, l, g, k_for(l, density_of(l)), payload,
                       options_.momentum_masking && w.collective != Collective::kSparseAllreduce);
}

EncodeResult DgcCompressor::encode_dense(std::size_t index, Layer& l, const float* g, TensorView payload) {
  const bool half = options_.dense_dtype == DType::kFloat16;
  if (l.sparse_momentum) {
    // First dense step after sparse ones (the density rose): u differs between ranks and v
    // holds what was not sent yet. Send everything, as a sparse step at density 1 would:
    // momentum correction, then all of v through the allreduce; everything sent means
    // masking clears u on every rank, so the dense momentum restarts identically.
    l.flushing = true;
    l.taken = Layer::Taken::kAllOfV;
    if (l.device == Device::kCuda) {
      return {device_->encode_flush(index, g, clip_limit(), options_.momentum, options_.nesterov, half,
                                    payload.data())};
    }
    kernels::DgcAccumulateArgs args;
    args.momentum = options_.momentum;
    args.nesterov = options_.nesterov;
    args.grad_scale = clip_scale(g, l.numel);
    const kernels::DgcAccumulateResult acc =
        kernels::dgc_accumulate(g, l.u.data(), l.v.data(), l.numel, args);
    if (half) {
      kernels::dgc_scaled_copy_f16(l.v.data(), 1.0f, static_cast<std::uint16_t*>(payload.data()),
                                   l.numel);
    } else {
      kernels::dgc_scaled_copy_f32(l.v.data(), 1.0f, static_cast<float*>(payload.data()), l.numel);
    }
    std::fill(l.v.begin(), l.v.end(), 0.0f);
    std::fill(l.u.begin(), l.u.end(), 0.0f);
    return {acc.nonfinite};
  }
  l.taken = Layer::Taken::kNothing;
  if (l.device == Device::kCuda) return {device_->encode_dense(index, g, clip_limit(), half, payload.data())};
  const float s = clip_scale(g, l.numel);
  if (half) {
    return {kernels::dgc_scaled_copy_f16(g, s, static_cast<std::uint16_t*>(payload.data()), l.numel)};
  }
  return {kernels::dgc_scaled_copy_f32(g, s, static_cast<float*>(payload.data()), l.numel)};
}

EncodeResult DgcCompressor::encode_sparse(std::size_t index, Layer& l, const float* g,
                                          std::size_t kk, TensorView payload, bool mask_now) {
  const std::size_t n = l.numel;
  l.sparse_momentum = true;
  l.taken = Layer::Taken::kSelected;
  GRADCOMM_CHECK(reinterpret_cast<std::uintptr_t>(payload.data()) % 4 == 0, ErrorCode::kInvalidArgument,
                 "DgcCompressor::encode layer ", index, ": payload must be 4-byte aligned");
  const double d = density_of(l);
  kernels::dgc::SparseEncodeArgs args;
  args.grad = g;
  args.n = n;
  args.k = kk;
  args.momentum = options_.momentum;
  args.nesterov = options_.nesterov;
  args.masking = mask_now;
  args.exact = options_.selection == DgcSelection::kExact || static_cast<double>(n) * d < 2.0;
  args.density = d;
  args.sample_stride = sample_stride_;
  args.half_values = options_.value_dtype == DType::kFloat16;
  args.payload = payload.data();
  if (!args.exact) {
    const std::uint64_t draw = splitmix64(
        options_.seed ^ splitmix64(index * 0x100000001b3ull + static_cast<std::uint64_t>(rank_)) ^
        l.rng_counter);
    args.sample_start = static_cast<std::size_t>(draw % std::min(sample_stride_, n));
    l.rng_counter += 1;
  }
  if (l.device == Device::kCuda) return {device_->encode_sparse(index, args, clip_limit())};

  args.u = l.u.data();
  args.v = l.v.data();
  args.grad_scale = clip_scale(g, n);
  kernels::dgc::ThresholdMemory memory{l.threshold_cache, l.threshold_before};
  kernels::dgc::SearchStats stats;
  args.memory = &memory;
  args.stats = &stats;
  const std::size_t nonfinite =
      kernels::dgc_encode_sparse(args, {keys_.get(), scratch_.get(), samples_.data()});
  l.threshold_cache = memory.last;
  l.threshold_before = memory.before;
  l.stats = {stats.k, stats.sent, stats.candidates, std::bit_cast<float>(stats.threshold), stats.rounds};
  return {nonfinite};
}

}  // namespace gradcomm
