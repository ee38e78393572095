// DgcCompressor: checking the options, sizing the per-layer state, the settings
// fingerprint that ranks compare, and the layer lookup encode and decode share.

#include <algorithm>
#include <cmath>
#include <sstream>

#include "gradcomm/dgc.h"
#include "compress/dgc/dgc_device.h"
#include "kernels/shared/dgc_math.h"
#include "kernels/shared/dgc_search.h"

namespace gradcomm {

namespace {

bool wire_dtype_ok(DType d) { return d == DType::kFloat32 || d == DType::kFloat16; }

}  // namespace

const char* dgc_selection_name(DgcSelection selection) noexcept {
  switch (selection) {
    case DgcSelection::kSampled:
      return "sampled";
    case DgcSelection::kExact:
      return "exact";
  }
  return "unknown";
}

DgcSelection parse_dgc_selection(const std::string& name) {
  if (name == "sampled") return DgcSelection::kSampled;
  if (name == "exact") return DgcSelection::kExact;
  GRADCOMM_THROW(ErrorCode::kInvalidArgument, "DgcCompressor: selection must be 'sampled' or 'exact', got '",
                 name, "'");
}

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
  GRADCOMM_CHECK_ARG(o.exchange == SparseExchange::kAllgather || o.exchange == SparseExchange::kReduceScatter ||
                         o.exchange == SparseExchange::kDense,
                     "DgcCompressor: unknown exchange ", static_cast<int>(o.exchange));
  GRADCOMM_CHECK_ARG(wire_dtype_ok(o.dense_dtype),
                     "DgcCompressor: dense_dtype must be float32 or float16, got ",
                     dtype_name(o.dense_dtype));
}

DgcCompressor::~DgcCompressor() = default;
DgcCompressor::DgcCompressor(DgcCompressor&&) noexcept = default;
DgcCompressor& DgcCompressor::operator=(DgcCompressor&&) noexcept = default;

void DgcCompressor::setup(std::span<const LayerSpec> layers, int world_size, int rank) {
  GRADCOMM_CHECK_ARG(world_size >= 1 && rank >= 0 && rank < world_size,
                     "DgcCompressor::setup: rank ", rank, " of world size ", world_size);
  world_size_ = world_size;
  rank_ = rank;
  layers_.clear();
  layers_.resize(layers.size());
  host_copies_.clear();
  device_.reset();
  const std::size_t stride = sample_stride_;
  std::size_t max_keys = 0, max_samples = 0;
  std::vector<detail::DgcDevice::LayerShape> on_device;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const LayerSpec& spec = layers[i];
    // Indices travel as uint32 with 0xffffffff reserved for the sentinel.
    GRADCOMM_CHECK_ARG(spec.numel < kernels::dgc::kSentinel, "DgcCompressor::setup: layer ", i, " ('",
                       spec.name, "') has ", spec.numel,
                       " elements; sparse indices are uint32, so at most 2^32 - 2");
    Layer& layer = layers_[i];
    layer.numel = spec.numel;
    layer.dense_always = is_dense_by_default(spec) || spec.numel == 0;
    layer.target = options_.density;
    layer.exchange = options_.exchange;
    layer.device = spec.device;
    layer.device_index = spec.device_index;
    if (spec.device == Device::kCuda) {
      GRADCOMM_CHECK(options_.exchange != SparseExchange::kReduceScatter, ErrorCode::kUnsupported,
                     "DgcCompressor::setup rank ", rank, " layer ", i, " ('", spec.name,
                     "'): the sparse allreduce (exchange reduce_scatter) runs on host layers only");
      const std::size_t slots = layer.dense_always ? 0 : max_payload_bytes(i) / (4 + dtype_size(options_.value_dtype));
      on_device.push_back({i, spec.numel, spec.device_index, !layer.dense_always, slots});
      continue;
    }
    layer.u.assign(spec.numel, 0.0f);
    if (!layer.dense_always) {
      layer.v.assign(spec.numel, 0.0f);
      max_keys = std::max(max_keys, spec.numel);
      max_samples = std::max(max_samples, kernels::dgc::sample_count(spec.numel, 0, stride));
    }
  }
  keys_.reset(max_keys ? new std::uint64_t[max_keys] : nullptr);
  scratch_.reset(max_keys ? new std::uint64_t[max_keys] : nullptr);
  samples_.assign(max_samples, 0);
  if (!on_device.empty()) {
    device_ = detail::DgcDevice::create(on_device, layers.size(), stride, rank);
    device_->set_execution(execution_);
  }
}

void DgcCompressor::set_execution(const ExecutionContext& context) {
  execution_ = context;
  if (device_) device_->set_execution(context);
}

std::string DgcCompressor::settings_fingerprint() const {
  const DgcOptions& o = options_;
  std::string warmup;
  for (double d : o.warmup_densities) warmup += detail::shortest(d) + ',';
  return detail::concat("dgc density=", o.density, " warmup=[", warmup, "] steps_per_epoch=", o.steps_per_epoch,
                        " momentum=", o.momentum, " nesterov=", o.nesterov, " masking=", o.momentum_masking,
                        " clip=", o.clip_norm, " selection=", dgc_selection_name(o.selection),
                        " sample=", o.sample_fraction, " seed=", o.seed, " values=", dtype_name(o.value_dtype),
                        " dense=", dtype_name(o.dense_dtype), " fallback=", o.dense_fallback,
                        " max_layer_density=", o.max_layer_density,
                        " exchange=", sparse_exchange_name(o.exchange));
}

DgcCompressor::Layer& DgcCompressor::checked_layer(const char* call, std::size_t layer,
                                                   TensorView tensor, const char* role) {
  GRADCOMM_CHECK(layer < layers_.size(), ErrorCode::kInvalidArgument, "DgcCompressor::", call,
                 ": layer ", layer, " out of range (", layers_.size(), " layers)");
  Layer& l = layers_[layer];
  GRADCOMM_CHECK(tensor.numel() == l.numel, ErrorCode::kSizeMismatch, "DgcCompressor::", call,
                 " rank ", rank_, " layer ", layer, ": ", role, " ", tensor.describe(),
                 ", layer has ", l.numel, " elements");
  GRADCOMM_CHECK(tensor.device() == l.device && (l.device == Device::kCpu || tensor.device_index() == l.device_index),
                 ErrorCode::kInvalidArgument, "DgcCompressor::", call, " rank ", rank_, " layer ", layer,
                 ": ", role, " ", tensor.describe(), " is not where the layer lives (", device_name(l.device),
                 l.device == Device::kCuda ? detail::concat(" ", l.device_index) : std::string(), ")");
  return l;
}

}  // namespace gradcomm
