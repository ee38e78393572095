// DgcCompressor::encode: gradient clipping, momentum correction and accumulation, then a
// dense payload (including the flush after sparse steps) or the sparse top-k selection.

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "compress/dgc/dgc_payload.h"
#include "gradcomm/dgc.h"
#include "kernels/cpu/dgc_kernels.h"

namespace gradcomm {

using detail::kHeaderBytes;

namespace {

// The reference aims the sample threshold at k and trims above 1.3k. With a fixed k slots
// every count above k is trimmed anyway, so we aim at 1.3k: the trim then sees every
// element above the threshold, and the result is the exact top-k whenever count >= k.
constexpr double kOversample = 1.3;
// Below 0.8k candidates the threshold is lowered by 0.8 and v recounted, at most this many
// passes in all (the reference's 10 rounds).
constexpr double kLowFraction = 0.8;
constexpr double kLowerFactor = 0.8;
constexpr int kMaxRounds = 10;
// The fused pass keeps at most this many times k candidates (plus a little) before it
// gives up and leaves the selection to a separate pass.
constexpr std::size_t kMaxFusedCandidates = 4;

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

float DgcCompressor::clip_scale(const float* grad, std::size_t n) const {
  if (options_.clip_norm <= 0.0f) return 1.0f;
  const double limit = options_.clip_norm / std::sqrt(static_cast<double>(world_size_));
  const double norm = std::sqrt(kernels::dgc_sum_squares_finite(grad, n));
  return norm > limit ? static_cast<float>(limit / norm) : 1.0f;
}

EncodeResult DgcCompressor::encode(std::size_t layer, TensorView grad, TensorView payload) {
  Layer& l = checked_layer("encode", layer, grad, "gradient");
  const float* g = grad.span<const float>("DgcCompressor gradient").data();
  const LayerWire w = wire(layer);
  GRADCOMM_CHECK(payload.nbytes() == w.bytes() && payload.dtype() == w.dtype,
                 ErrorCode::kSizeMismatch, "DgcCompressor::encode rank ", rank_, " layer ", layer,
                 ": payload ", payload.describe(), ", expected ", w.count, " ", dtype_name(w.dtype),
                 " (epoch ", epoch_, ", density ", density_of(l), ")");
  if (w.collective == Collective::kAllreduce) return encode_dense(l, g, payload);
  return encode_sparse(layer, l, g, k_for(l, density_of(l)), payload,
                       options_.momentum_masking && w.collective != Collective::kSparseAllreduce);
}

EncodeResult DgcCompressor::encode_dense(Layer& l, const float* g, TensorView payload) {
  const float s = clip_scale(g, l.numel);
  if (l.sparse_momentum) {
    // First dense step after sparse ones (the density rose): u differs between ranks and v
    // holds what was not sent yet. Send everything, as a sparse step at density 1 would:
    // momentum correction, then all of v through the allreduce; everything sent means
    // masking clears u on every rank, so the dense momentum restarts identically.
    kernels::DgcAccumulateArgs args;
    args.momentum = options_.momentum;
    args.nesterov = options_.nesterov;
    args.grad_scale = s;
    const kernels::DgcAccumulateResult acc =
        kernels::dgc_accumulate(g, l.u.data(), l.v.data(), l.numel, args);
    if (options_.dense_dtype == DType::kFloat16) {
      kernels::dgc_scaled_copy_f16(l.v.data(), 1.0f, static_cast<std::uint16_t*>(payload.data()),
                                   l.numel);
    } else {
      kernels::dgc_scaled_copy_f32(l.v.data(), 1.0f, static_cast<float*>(payload.data()), l.numel);
    }
    std::fill(l.v.begin(), l.v.end(), 0.0f);
    std::fill(l.u.begin(), l.u.end(), 0.0f);
    l.flushing = true;
    l.taken = Layer::Taken::kAllOfV;
    return {acc.nonfinite};
  }
  l.taken = Layer::Taken::kNothing;
  if (options_.dense_dtype == DType::kFloat16) {
    return {
        kernels::dgc_scaled_copy_f16(g, s, static_cast<std::uint16_t*>(payload.data()), l.numel)};
  }
  return {kernels::dgc_scaled_copy_f32(g, s, static_cast<float*>(payload.data()), l.numel)};
}

// Where this step's threshold will be, from the last two estimates: while v builds up
// (the first ~1/density steps) the threshold climbs steadily, and error feedback piles
// values up just under the last one, so reusing it unchanged would collect several times
// k. In the steady state the two estimates agree and this is the last one.
std::uint32_t DgcCompressor::predicted_threshold(const Layer& l) {
  if (l.threshold_cache == 0 || l.threshold_before == 0) return l.threshold_cache;
  const float last = std::bit_cast<float>(l.threshold_cache);
  const float before = std::bit_cast<float>(l.threshold_before);
  const float next = last + std::max(0.0f, last - before);
  return std::isfinite(next) ? std::bit_cast<std::uint32_t>(next) : l.threshold_cache;
}

EncodeResult DgcCompressor::encode_sparse(std::size_t index, Layer& l, const float* g,
                                          std::size_t kk, TensorView payload, bool mask_now) {
  const std::size_t n = l.numel;
  l.sparse_momentum = true;
  l.taken = Layer::Taken::kSelected;
  auto* base = static_cast<std::byte*>(payload.data());
  GRADCOMM_CHECK(reinterpret_cast<std::uintptr_t>(base) % 4 == 0, ErrorCode::kInvalidArgument,
                 "DgcCompressor::encode layer ", index, ": payload must be 4-byte aligned");
  auto* indices = reinterpret_cast<std::uint32_t*>(base + kHeaderBytes);
  std::byte* values = base + kHeaderBytes + 4 * kk;

  const double d = density_of(l);
  const bool exact = options_.selection == DgcSelection::kExact || static_cast<double>(n) * d < 2.0;
  const std::size_t stride = sample_stride_;
  kernels::DgcAccumulateArgs args;
  args.momentum = options_.momentum;
  args.nesterov = options_.nesterov;
  args.grad_scale = clip_scale(g, n);
  if (!exact) {
    const std::uint64_t draw = splitmix64(
        options_.seed ^ splitmix64(index * 0x100000001b3ull + static_cast<std::uint64_t>(rank_)) ^
        l.rng_counter);
    args.sample_start = static_cast<std::size_t>(draw % std::min(stride, n));
    args.sample_stride = stride;
    args.samples = samples_.data();
    l.rng_counter += 1;
    // Collect at the predicted threshold inside the fused pass; most steps then need no
    // second pass over v. A prediction far too low stops at the capacity.
    args.collect_bits = predicted_threshold(l);
    args.keys = keys_.get();
    args.key_capacity = std::min(n, kMaxFusedCandidates * kk + 1024);
  }
  const kernels::DgcAccumulateResult acc =
      kernels::dgc_accumulate(g, l.u.data(), l.v.data(), n, args);

  DgcLayerStats& st = l.stats;
  st = {};
  st.k = kk;
  st.rounds = 1;
  const auto low = static_cast<std::size_t>(std::ceil(kLowFraction * static_cast<double>(kk)));
  auto lower = [](std::uint32_t bits) {
    const float lowered = std::bit_cast<float>(bits) * static_cast<float>(kLowerFactor);
    return std::max<std::uint32_t>(std::bit_cast<std::uint32_t>(lowered), 1);
  };
  std::uint32_t estimate = 1;  // exact: every nonzero is a candidate
  if (!exact) {
    const auto c =
        static_cast<std::size_t>(std::ceil(static_cast<double>(acc.samples) * d * kOversample));
    estimate = kernels::dgc_sample_threshold(samples_.data(), acc.samples, c);
  }
  std::uint32_t t = estimate;
  std::size_t count = 0;
  bool done = false;
  if (args.collect_bits != 0 && !acc.overflow) {
    // At least k at the cached threshold: the true top-k are all among them. Fewer, but
    // the cached threshold is at or below this step's estimate: as good as a recount.
    count = acc.candidates;
    done = count >= kk || (args.collect_bits <= t && count >= low);
    if (done) {
      st.threshold = std::bit_cast<float>(args.collect_bits);
    } else if (args.collect_bits <= t) {
      t = lower(args.collect_bits);
    }
  }
  while (!done) {
    count = kernels::dgc_collect(l.v.data(), n, t, keys_.get());
    st.rounds += 1;
    st.threshold = std::bit_cast<float>(t);
    if (count >= low || t <= 1 || st.rounds >= kMaxRounds) break;
    t = lower(t);
  }
  if (!exact) {
    l.threshold_before = l.threshold_cache;
    l.threshold_cache = estimate;
  }
  st.candidates = count;
  const std::size_t sent = kernels::dgc_select_top(keys_.get(), count, kk, scratch_.get(), indices);
  st.sent = sent;

  const auto count32 = static_cast<std::uint32_t>(sent);
  std::memcpy(base, &count32, sizeof count32);
  std::fill(indices + sent, indices + kk, kernels::kDgcSentinel);
  const std::size_t vsize = dtype_size(options_.value_dtype);
  if (options_.value_dtype == DType::kFloat16) {
    auto* vals = reinterpret_cast<std::uint16_t*>(values);
    kernels::dgc_pack_f16(indices, sent, l.v.data(), l.u.data(), mask_now, vals);
  } else {
    auto* vals = reinterpret_cast<float*>(values);
    kernels::dgc_pack_f32(indices, sent, l.v.data(), l.u.data(), mask_now, vals);
  }
  // Padding slots and the tail to 8 bytes are zero, so payloads are fully defined bytes.
  std::byte* pad = values + sent * vsize;
  std::memset(pad, 0, static_cast<std::size_t>(base + payload.nbytes() - pad));
  return {acc.nonfinite};
}

}  // namespace gradcomm
