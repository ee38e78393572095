#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <sstream>

#include "core/float16.h"
#include "core/state_blob.h"
#include "gradcomm/dgc.h"
#include "kernels/cpu/dense_kernels.h"
#include "kernels/cpu/dgc_kernels.h"

namespace gradcomm {

const char* dgc_selection_name(DgcSelection selection) noexcept {
  switch (selection) {
    case DgcSelection::kSampled:
      return "sampled";
    case DgcSelection::kExact:
      return "exact";
  }
  return "unknown";
}

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
constexpr std::size_t kHeaderBytes = 4;  // uint32 count

constexpr std::size_t align8(std::size_t n) { return (n + 7) / 8 * 8; }

bool wire_dtype_ok(DType d) { return d == DType::kFloat32 || d == DType::kFloat16; }

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::uint32_t load_u32(const std::byte* p) {
  std::uint32_t x;
  std::memcpy(&x, p, sizeof x);
  return x;
}

// Value j of a sparse payload's value array (fp16 or fp32 on the wire).
float load_value(const std::byte* values, std::size_t j, bool half) {
  if (half) {
    std::uint16_t h;
    std::memcpy(&h, values + sizeof h * j, sizeof h);
    return half_to_float(h);
  }
  float x;
  std::memcpy(&x, values + sizeof x * j, sizeof x);
  return x;
}

// Checkpoint blob: a fixed magic, then little fixed-size fields, then the arrays.
constexpr char kMagic[8] = {'g', 'c', 'D', 'G', 'C', 's', 't', '1'};

}  // namespace

DgcCompressor::DgcCompressor(DgcOptions options) : options_(std::move(options)) {
  const DgcOptions& o = options_;
  auto density_ok = [](double d) { return d > 0.0 && d <= 1.0; };
  GRADCOMM_CHECK_ARG(density_ok(o.density), "DgcCompressor: density must be in (0, 1], got ",
                     o.density);
  for (std::size_t e = 0; e < o.warmup_densities.size(); ++e) {
    GRADCOMM_CHECK_ARG(density_ok(o.warmup_densities[e]), "DgcCompressor: warmup_densities[", e,
                       "] must be in (0, 1], got ", o.warmup_densities[e]);
  }
  GRADCOMM_CHECK_ARG(o.steps_per_epoch >= 0, "DgcCompressor: steps_per_epoch must be >= 0, got ",
                     o.steps_per_epoch);
  GRADCOMM_CHECK_ARG(std::isfinite(o.momentum) && o.momentum >= 0.0f && o.momentum < 1.0f,
                     "DgcCompressor: momentum must be in [0, 1), got ", o.momentum);
  GRADCOMM_CHECK_ARG(std::isfinite(o.clip_norm) && o.clip_norm >= 0.0f,
                     "DgcCompressor: clip_norm must be >= 0 (0: off), got ", o.clip_norm);
  GRADCOMM_CHECK_ARG(o.selection == DgcSelection::kSampled || o.selection == DgcSelection::kExact,
                     "DgcCompressor: unknown selection ", static_cast<int>(o.selection));
  GRADCOMM_CHECK_ARG(o.sample_fraction > 0.0 && o.sample_fraction <= 1.0,
                     "DgcCompressor: sample_fraction must be in (0, 1], got ", o.sample_fraction);
  sample_stride_ =
      std::max<std::size_t>(1, static_cast<std::size_t>(std::llround(1.0 / o.sample_fraction)));
  GRADCOMM_CHECK_ARG(wire_dtype_ok(o.value_dtype),
                     "DgcCompressor: value_dtype must be float32 or float16, got ",
                     dtype_name(o.value_dtype));
  GRADCOMM_CHECK_ARG(o.max_layer_density == 0.0 || (density_ok(o.max_layer_density) && o.max_layer_density >= o.density),
                     "DgcCompressor: max_layer_density must be 0 (off) or in [density, 1], got ",
                     o.max_layer_density);
  GRADCOMM_CHECK_ARG(wire_dtype_ok(o.dense_dtype),
                     "DgcCompressor: dense_dtype must be float32 or float16, got ",
                     dtype_name(o.dense_dtype));
}

void DgcCompressor::setup(std::span<const LayerSpec> layers, int world_size, int rank) {
  GRADCOMM_CHECK_ARG(world_size >= 1 && rank >= 0 && rank < world_size,
                     "DgcCompressor::setup: rank ", rank, " of world size ", world_size);
  world_size_ = world_size;
  rank_ = rank;
  layers_.clear();
  layers_.resize(layers.size());
  const std::size_t stride = sample_stride_;
  std::size_t max_keys = 0, max_samples = 0;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const LayerSpec& spec = layers[i];
    // Indices travel as uint32 with 0xffffffff reserved for the sentinel.
    GRADCOMM_CHECK_ARG(spec.numel < kernels::kDgcSentinel, "DgcCompressor::setup: layer ", i, " ('",
                       spec.name, "') has ", spec.numel,
                       " elements; sparse indices are uint32, so at most 2^32 - 2");
    Layer& layer = layers_[i];
    layer.numel = spec.numel;
    layer.dense_always = is_dense_by_default(spec) || spec.numel == 0;
    layer.target = options_.density;
    layer.u.assign(spec.numel, 0.0f);
    if (!layer.dense_always) {
      layer.v.assign(spec.numel, 0.0f);
      max_keys = std::max(max_keys, spec.numel);
      max_samples = std::max(max_samples, kernels::dgc_sample_count(spec.numel, 0, stride));
    }
  }
  keys_.reset(max_keys ? new std::uint64_t[max_keys] : nullptr);
  scratch_.reset(max_keys ? new std::uint64_t[max_keys] : nullptr);
  samples_.assign(max_samples, 0);
}

std::string DgcCompressor::settings_fingerprint() const {
  const DgcOptions& o = options_;
  std::ostringstream s;
  s.precision(17);
  s << "dgc density=" << o.density << " warmup=[";
  for (double d : o.warmup_densities) s << d << ',';
  s << "] steps_per_epoch=" << o.steps_per_epoch << " momentum=" << o.momentum
    << " nesterov=" << o.nesterov << " masking=" << o.momentum_masking << " clip=" << o.clip_norm
    << " selection=" << dgc_selection_name(o.selection) << " sample=" << o.sample_fraction
    << " seed=" << o.seed << " values=" << dtype_name(o.value_dtype)
    << " dense=" << dtype_name(o.dense_dtype) << " fallback=" << o.dense_fallback
    << " max_layer_density=" << o.max_layer_density;
  return s.str();
}

double DgcCompressor::scheduled_density(double after_warmup) const {
  const auto& w = options_.warmup_densities;
  return static_cast<std::size_t>(epoch_) < w.size() ? w[static_cast<std::size_t>(epoch_)] : after_warmup;
}

double DgcCompressor::density() const { return scheduled_density(options_.density); }

double DgcCompressor::density_of(const Layer& layer) const { return scheduled_density(layer.target); }

double DgcCompressor::layer_density(std::size_t layer) const { return density_of(layers_.at(layer)); }

void DgcCompressor::set_layer_density(std::size_t layer, double density) {
  GRADCOMM_CHECK_ARG(layer < layers_.size(), "DgcCompressor::set_layer_density: layer ", layer,
                     " out of range (", layers_.size(), " layers)");
  const double most = options_.max_layer_density > 0.0 ? options_.max_layer_density : options_.density;
  GRADCOMM_CHECK_ARG(density > 0.0 && density <= most, "DgcCompressor::set_layer_density: layer ", layer,
                     " density ", density, " outside (0, ", most, "] (raise max_layer_density)");
  layers_[layer].target = density;
}

std::size_t DgcCompressor::payload_bytes_at(std::size_t layer, double density) const {
  const Layer& l = layers_.at(layer);
  const std::size_t kk = k_for(l, density);
  return sparse_for(l, kk) ? sparse_payload_bytes(kk) : l.numel * dtype_size(options_.dense_dtype);
}

std::size_t DgcCompressor::k_for(const Layer& layer, double d) const {
  if (layer.numel == 0) return 0;
  const auto k = static_cast<std::size_t>(std::ceil(d * static_cast<double>(layer.numel)));
  return std::clamp<std::size_t>(k, 1, layer.numel);
}

bool DgcCompressor::sparse_for(const Layer& layer, std::size_t k) const {
  if (layer.dense_always) return false;
  if (!options_.dense_fallback) return true;
  // Bytes each rank receives: an allgather of k (index, value) slots from p ranks, against
  // a ring allreduce's 2n elements. With fp32 on both sides this is k/n <= 1/p.
  const std::size_t slot = 4 + dtype_size(options_.value_dtype);
  return slot * k * static_cast<std::size_t>(world_size_) <=
         2 * dtype_size(options_.dense_dtype) * layer.numel;
}

std::size_t DgcCompressor::sparse_payload_bytes(std::size_t k) const {
  return align8(kHeaderBytes + k * (4 + dtype_size(options_.value_dtype)));
}

std::size_t DgcCompressor::k(std::size_t layer) const {
  const Layer& l = layers_.at(layer);
  return k_for(l, density_of(l));
}

bool DgcCompressor::is_sparse(std::size_t layer) const {
  const Layer& l = layers_.at(layer);
  return sparse_for(l, k_for(l, density_of(l)));
}

LayerWire DgcCompressor::wire(std::size_t layer) const {
  const Layer& l = layers_.at(layer);
  const std::size_t kk = k_for(l, density_of(l));
  if (sparse_for(l, kk)) return {Collective::kAllgather, DType::kUInt8, sparse_payload_bytes(kk)};
  return {Collective::kAllreduce, options_.dense_dtype, l.numel};
}

std::size_t DgcCompressor::max_payload_bytes(std::size_t layer) const {
  const Layer& l = layers_.at(layer);
  std::size_t most = l.numel * dtype_size(options_.dense_dtype);
  auto consider = [&](double d) {
    const std::size_t kk = k_for(l, d);
    if (sparse_for(l, kk)) most = std::max(most, sparse_payload_bytes(kk));
  };
  consider(options_.density);
  consider(options_.max_layer_density > 0.0 ? options_.max_layer_density : options_.density);
  for (double d : options_.warmup_densities) consider(d);
  return most;
}

void DgcCompressor::set_step(std::int64_t step) {
  step_ = step;
  if (options_.steps_per_epoch > 0) epoch_ = step / options_.steps_per_epoch;
}

void DgcCompressor::set_epoch(std::int64_t epoch) {
  GRADCOMM_CHECK_ARG(options_.steps_per_epoch == 0, "DgcCompressor::set_epoch(", epoch,
                     "): the warm-up follows the step (steps_per_epoch=", options_.steps_per_epoch,
                     "); set steps_per_epoch=0 to drive it by epoch");
  GRADCOMM_CHECK_ARG(epoch >= 0, "DgcCompressor::set_epoch: epoch ", epoch, " < 0");
  epoch_ = epoch;
}

float DgcCompressor::clip_scale(const float* grad, std::size_t n) const {
  if (options_.clip_norm <= 0.0f) return 1.0f;
  const double limit = options_.clip_norm / std::sqrt(static_cast<double>(world_size_));
  const double norm = std::sqrt(kernels::dgc_sum_squares_finite(grad, n));
  return norm > limit ? static_cast<float>(limit / norm) : 1.0f;
}

DgcCompressor::Layer& DgcCompressor::checked_layer(const char* call, std::size_t layer,
                                                   TensorView tensor, const char* role) {
  GRADCOMM_CHECK(layer < layers_.size(), ErrorCode::kInvalidArgument, "DgcCompressor::", call,
                 ": layer ", layer, " out of range (", layers_.size(), " layers)");
  Layer& l = layers_[layer];
  GRADCOMM_CHECK(tensor.numel() == l.numel, ErrorCode::kSizeMismatch, "DgcCompressor::", call,
                 " rank ", rank_, " layer ", layer, ": ", role, " ", tensor.describe(),
                 ", layer has ", l.numel, " elements");
  return l;
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
  return encode_sparse(layer, l, g, k_for(l, density_of(l)), payload);
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
                                          std::size_t kk, TensorView payload) {
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
    kernels::dgc_pack_f16(indices, sent, l.v.data(), l.u.data(), options_.momentum_masking, vals);
  } else {
    auto* vals = reinterpret_cast<float*>(values);
    kernels::dgc_pack_f32(indices, sent, l.v.data(), l.u.data(), options_.momentum_masking, vals);
  }
  // Padding slots and the tail to 8 bytes are zero, so payloads are fully defined bytes.
  std::byte* pad = values + sent * vsize;
  std::memset(pad, 0, static_cast<std::size_t>(base + payload.nbytes() - pad));
  return {acc.nonfinite};
}

void DgcCompressor::decode(std::size_t layer, TensorView received, TensorView out) {
  Layer& l = checked_layer("decode", layer, out, "output");
  float* dst = out.span<float>("DgcCompressor output").data();
  if (is_sparse(layer)) {
    decode_sparse(layer, l, received, dst);
  } else {
    decode_dense(l, received, dst);
  }
}

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

std::span<const float> DgcCompressor::momentum(std::size_t layer) const {
  return layers_.at(layer).u;
}
std::span<const float> DgcCompressor::residual(std::size_t layer) const {
  return layers_.at(layer).v;
}
const DgcLayerStats& DgcCompressor::last_stats(std::size_t layer) const {
  return layers_.at(layer).stats;
}

std::vector<std::byte> DgcCompressor::save_state() const {
  std::vector<std::byte> blob;
  detail::StateBlobWriter w(blob);
  w.bytes(kMagic, sizeof kMagic);
  w.value<std::uint64_t>(static_cast<std::uint64_t>(epoch_));
  w.value<std::uint64_t>(static_cast<std::uint64_t>(step_));
  w.value<std::uint64_t>(layers_.size());
  for (const Layer& l : layers_) {
    w.value<std::uint64_t>(l.numel);
    w.value<std::uint64_t>(l.v.size());
    w.value<std::uint64_t>(l.rng_counter);
    w.value<std::uint64_t>(l.threshold_cache);
    w.value<std::uint64_t>(l.threshold_before);
    w.value<std::uint64_t>(l.sparse_momentum ? 1 : 0);
    w.bytes(l.u.data(), l.u.size() * sizeof(float));
    w.bytes(l.v.data(), l.v.size() * sizeof(float));
  }
  return blob;
}

void DgcCompressor::load_state(std::span<const std::byte> blob) {
  detail::StateBlobReader r(blob, detail::concat("DgcCompressor::load_state on rank ", rank_));
  char magic[sizeof kMagic];
  r.bytes(magic, sizeof magic, "the magic");
  GRADCOMM_CHECK(std::memcmp(magic, kMagic, sizeof kMagic) == 0, ErrorCode::kCorruptPayload,
                 "DgcCompressor::load_state on rank ", rank_, ": not a DGC state blob");
  const auto epoch = static_cast<std::int64_t>(r.value<std::uint64_t>("the epoch"));
  const auto step = static_cast<std::int64_t>(r.value<std::uint64_t>("the step"));
  const std::uint64_t nlayers = r.value<std::uint64_t>("the layer count");
  GRADCOMM_CHECK(nlayers == layers_.size() && epoch >= 0 && step >= 0, ErrorCode::kCorruptPayload,
                 "DgcCompressor::load_state on rank ", rank_, ": blob has ", nlayers,
                 " layers (epoch ", epoch, ", step ", step, "), this compressor has ",
                 layers_.size());
  // Read into copies first so a truncated blob leaves the current state intact.
  std::vector<Layer> loaded = layers_;
  for (std::size_t i = 0; i < loaded.size(); ++i) {
    Layer& l = loaded[i];
    const std::uint64_t numel = r.value<std::uint64_t>("a layer size");
    const std::uint64_t vsize = r.value<std::uint64_t>("a residual size");
    GRADCOMM_CHECK(numel == l.numel && vsize == l.v.size(), ErrorCode::kCorruptPayload,
                   "DgcCompressor::load_state on rank ", rank_, ": layer ", i, " has ", numel,
                   " elements and a residual of ", vsize, " in the blob, ", l.numel, " and ",
                   l.v.size(), " here");
    l.rng_counter = r.value<std::uint64_t>("an RNG counter");
    l.stats = {};
    l.threshold_cache = static_cast<std::uint32_t>(r.value<std::uint64_t>("a threshold"));
    l.threshold_before = static_cast<std::uint32_t>(r.value<std::uint64_t>("a threshold"));
    const std::uint64_t mode = r.value<std::uint64_t>("a layer mode");
    GRADCOMM_CHECK(mode <= 1 && (mode == 0 || !l.dense_always), ErrorCode::kCorruptPayload,
                   "DgcCompressor::load_state on rank ", rank_, ": layer ", i, " has mode ", mode);
    l.sparse_momentum = mode == 1;
    l.flushing = false;
    r.bytes(l.u.data(), l.u.size() * sizeof(float), "a momentum");
    r.bytes(l.v.data(), l.v.size() * sizeof(float), "a residual");
  }
  r.finish();
  layers_ = std::move(loaded);
  epoch_ = epoch;
  step_ = step;
}

}  // namespace gradcomm
