#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "core/state_blob.h"
#include "gradcomm/lgreco.h"
#include "compress/dgc/dgc_device.h"
#include "compress/quantize_device.h"
#include "kernels/cpu/dense_kernels.h"
#include "kernels/cpu/quantize_kernels.h"
#include "kernels/shared/dgc_math.h"
#include "lgreco/lgreco_device.h"

namespace gradcomm {

const char* lgreco_family_name(LgrecoFamily family) noexcept {
  switch (family) {
    case LgrecoFamily::kQuantBits: return "quant";
    case LgrecoFamily::kDgcDensity: return "dgc";
  }
  return "unknown";
}

LgrecoFamily parse_lgreco_family(const std::string& name) {
  if (name == "quant") return LgrecoFamily::kQuantBits;
  if (name == "dgc") return LgrecoFamily::kDgcDensity;
  GRADCOMM_THROW(ErrorCode::kInvalidArgument, "unknown L-GreCo family '", name,
                 "' (expected quant or dgc)");
}

namespace {

QuantizeOptions inner_quantize_options(const LgrecoOptions& options) {
  QuantizeOptions q = options.quantize;
  q.bits = options.default_bits;
  q.max_bits = *std::max_element(options.bit_widths.begin(), options.bit_widths.end());
  return q;
}

// Candidates must be distinct, in range, and include the default.
template <typename T, typename InRange>
void check_candidates(const std::vector<T>& values, const T& default_value, const char* what,
                      InRange in_range) {
  GRADCOMM_CHECK_ARG(!values.empty() && values.size() <= 255, "LgrecoCompressor: ", values.size(), " ",
                     what, " (1..255)");
  for (const T& v : values) {
    GRADCOMM_CHECK_ARG(in_range(v), "LgrecoCompressor: ", what, " entry ", v, " out of range");
    GRADCOMM_CHECK_ARG(std::count(values.begin(), values.end(), v) == 1, "LgrecoCompressor: ", what,
                       " entry ", v, " listed twice");
  }
  GRADCOMM_CHECK_ARG(std::count(values.begin(), values.end(), default_value) == 1,
                     "LgrecoCompressor: the default ", default_value, " is not among the ", what);
}

}  // namespace

LgrecoCompressor::LgrecoCompressor(LgrecoOptions options) : options_(std::move(options)) {
  GRADCOMM_CHECK_ARG(options_.family == LgrecoFamily::kQuantBits || options_.family == LgrecoFamily::kDgcDensity,
                     "LgrecoCompressor: unknown family ", static_cast<int>(options_.family));
  GRADCOMM_CHECK_ARG(options_.period >= 1, "LgrecoCompressor: period ", options_.period, " < 1");
  GRADCOMM_CHECK_ARG(options_.first_step >= 0, "LgrecoCompressor: first_step ", options_.first_step,
                     " < 0");
  GRADCOMM_CHECK_ARG(options_.bins >= 1 && options_.bins <= (1 << 24), "LgrecoCompressor: bins ",
                     options_.bins, " outside [1, 2^24]");
  if (quant_family()) {
    check_candidates(options_.bit_widths, options_.default_bits, "bit widths",
                     [](int b) { return b >= 1 && b <= 8; });
    quant_ = std::make_unique<QuantizeCompressor>(inner_quantize_options(options_));
  } else {
    check_candidates(options_.densities, options_.default_density, "densities",
                     [](double d) { return d > 0.0 && d <= 1.0; });
    GRADCOMM_CHECK_ARG(options_.dgc_sample >= 1, "LgrecoCompressor: dgc_sample must be positive");
    options_.dgc.density = options_.default_density;
    options_.dgc.max_layer_density = *std::max_element(options_.densities.begin(), options_.densities.end());
    options_.dgc.dense_fallback = false;
    dgc_ = std::make_unique<DgcCompressor>(options_.dgc);  // validates the remaining DGC options now
  }
}

LgrecoCompressor::~LgrecoCompressor() = default;

Compressor& LgrecoCompressor::inner() const {
  if (quant_family()) return *quant_;
  return *dgc_;
}

std::string LgrecoCompressor::name() const {
  return std::string("lgreco-") + lgreco_family_name(options_.family);
}

std::size_t LgrecoCompressor::num_candidates() const {
  return quant_family() ? options_.bit_widths.size() : options_.densities.size();
}

std::string LgrecoCompressor::candidate_name(std::size_t c) const {
  GRADCOMM_CHECK_ARG(c < num_candidates(), "LgrecoCompressor: candidate ", c, " of ", num_candidates());
  if (quant_family()) return std::to_string(options_.bit_widths[c]) + " bits";
  return detail::concat("density ", options_.densities[c]);
}

void LgrecoCompressor::setup(std::span<const LayerSpec> layers, int world_size, int rank) {
  world_size_ = world_size;
  rank_ = rank;
  layers_.assign(layers.begin(), layers.end());
  const std::size_t L = layers.size(), C = num_candidates();
  std::uint32_t c0 = 0;
  inner().setup(layers, world_size, rank);
  if (quant_family()) {
    c0 = static_cast<std::uint32_t>(
        std::find(options_.bit_widths.begin(), options_.bit_widths.end(), options_.default_bits) -
        options_.bit_widths.begin());
  } else {
    c0 = static_cast<std::uint32_t>(
        std::find(options_.densities.begin(), options_.densities.end(), options_.default_density) -
        options_.densities.begin());
  }
  default_choice_.assign(L, c0);
  choice_ = default_choice_;
  planned_.assign(L, 0);
  table_ = LgrecoTable(L, C);
  std::size_t largest = 0;
  const std::size_t bucket = options_.quantize.bucket_size;
  for (std::size_t l = 0; l < L; ++l) {
    const std::size_t n = layers[l].numel;
    planned_[l] = quant_family() ? quant_->is_quantized(l) : dgc_->is_sparse(l);
    for (std::size_t c = 0; c < C; ++c) {
      // What the layer costs on the wire per step under each setting: the Exchanger's
      // allgather of its payload, or a dense layer's allreduce whatever the setting.
      std::size_t payload = 0;
      if (planned_[l] && quant_family()) {
        payload = quantize_payload_bytes(n, options_.bit_widths[c], bucket);
      } else if (planned_[l]) {
        payload = dgc_->payload_bytes_at(l, options_.densities[c]);  // once warm-up is over
      }
      table_.bytes_at(l, c) = planned_[l] ? allgather_wire_bytes(payload, world_size)
                                          : allreduce_wire_bytes(n * sizeof(float), world_size);
      table_.error_at(l, c) = 0;
    }
    if (planned_[l]) largest = std::max(largest, n);
  }
  scratch_.assign(largest, 0.0f);
  mins_.assign(quant_family() ? kernels::quant::num_buckets(largest, bucket) : 0, 0.0f);
  maxs_.assign(mins_.size(), 0.0f);
  sample_.assign(quant_family() ? 0 : std::min(largest, options_.dgc_sample), 0.0f);
  table_layers_done_ = 0;
  table_step_ = -1;
  profiled_.assign(L, 0);
  device_.reset();
  device_rows_.clear();
  std::vector<detail::LgrecoDevice::LayerShape> on_device;
  for (std::size_t l = 0; l < L; ++l) {
    if (planned_[l] && layers[l].device == Device::kCuda) on_device.push_back({l, layers[l].numel, layers[l].device_index});
  }
  if (!on_device.empty()) {
    detail::LgrecoDevice::Settings settings;
    settings.candidates = C;
    settings.bucket = bucket;
    settings.stochastic = options_.quantize.rounding == Rounding::kStochastic;
    if (quant_family()) {
      settings.bit_widths = options_.bit_widths;
    } else {
      settings.densities = options_.densities;
      settings.dgc_sample = options_.dgc_sample;
    }
    device_ = detail::LgrecoDevice::create(on_device, L, settings, rank);
    device_->set_execution(execution_);
  }
}

void LgrecoCompressor::set_execution(const ExecutionContext& context) {
  execution_ = context;
  inner().set_execution(context);
  if (device_) device_->set_execution(context);
}

const LgrecoTable& LgrecoCompressor::local_table() const {
  if (!device_rows_.empty()) {
    device_->fetch_rows(device_rows_, table_);
    device_rows_.clear();
  }
  return table_;
}

std::string LgrecoCompressor::settings_fingerprint() const {
  std::string candidates;
  for (std::size_t c = 0; c < num_candidates(); ++c) {
    if (!candidates.empty()) candidates += ',';
    candidates += quant_family() ? std::to_string(options_.bit_widths[c])
                                 : detail::concat(options_.densities[c]);
  }
  return detail::concat("lgreco family=", lgreco_family_name(options_.family), " candidates=", candidates,
                        " default=", quant_family() ? detail::concat(options_.default_bits)
                                                    : detail::concat(options_.default_density),
                        " adaptive=", options_.adaptive, " period=",
                        options_.period, " first=", options_.first_step, " bins=", options_.bins,
                        " sample=", options_.dgc_sample, " | ",
                        inner().settings_fingerprint());
}

// The inner compressors size their payload bounds for every candidate: the quantizer for
// max_bits, DGC for max_layer_density (both set from the candidates).
std::size_t LgrecoCompressor::max_payload_bytes(std::size_t layer) const { return inner().max_payload_bytes(layer); }

LayerWire LgrecoCompressor::wire(std::size_t layer) const { return inner().wire(layer); }

bool LgrecoCompressor::profiles_step(std::int64_t step) const {
  return options_.adaptive && step >= options_.first_step &&
         (step - options_.first_step + 1) % options_.period == 0;
}

bool LgrecoCompressor::is_planned(std::size_t layer) const {
  GRADCOMM_CHECK_ARG(layer < planned_.size(), "LgrecoCompressor: layer ", layer, " of ", planned_.size());
  return planned_[layer] != 0;
}

bool LgrecoCompressor::table_ready() const noexcept {
  const auto planned = static_cast<std::size_t>(std::count(planned_.begin(), planned_.end(), 1));
  return profiles_step(step_) && table_step_ == step_ && table_layers_done_ == planned;
}

void LgrecoCompressor::set_step(std::int64_t step) {
  step_ = step;
  inner().set_step(step);
}

void LgrecoCompressor::set_epoch(std::int64_t epoch) { inner().set_epoch(epoch); }

// The error each candidate would make on the input the compressor is about to compress.
// Quantization: x = gradient + residual; nearest rounding exactly, stochastic in
// expectation; one min/max pass shared by all widths, then one pass per width. DGC:
// v' after momentum correction (paper Eq. 7) from this rank's u and v, then every density
// from one sorted sample. Every `period` steps only.
void LgrecoCompressor::profile(std::size_t layer, TensorView grad) {
  const auto start = std::chrono::steady_clock::now();
  if (table_step_ != step_) {  // the first layer of this profiling step
    table_step_ = step_;
    table_layers_done_ = 0;
    std::fill(profiled_.begin(), profiled_.end(), 0);
  }
  if (layers_[layer].device == Device::kCuda) {
    profile_on_device(layer, grad);
  } else {
    profile_on_host(layer, grad.span<const float>("gradient").data());
  }
  table_layers_done_ += profiled_[layer] ? 0 : 1;
  profiled_[layer] = 1;
  profile_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void LgrecoCompressor::profile_on_host(std::size_t layer, const float* grad) {
  const std::size_t n = layers_[layer].numel;
  float* x = scratch_.data();
  kernels::copy_zeroing_nonfinite(grad, x, n);
  const std::size_t C = num_candidates();
  if (quant_family()) {
    const std::span<const float> residual = quant_->residual(layer);
    if (!residual.empty()) {
      for (std::size_t i = 0; i < n; ++i) x[i] = kernels::fadd(x[i], residual[i]);
    }
    const std::size_t bucket = options_.quantize.bucket_size;
    const bool stochastic = options_.quantize.rounding == Rounding::kStochastic;
    kernels::bucket_min_max(x, n, bucket, mins_.data(), maxs_.data());
    for (std::size_t c = 0; c < C; ++c) {
      table_.error_at(layer, c) = std::sqrt(kernels::quantize_squared_error(
          x, n, bucket, options_.bit_widths[c], stochastic, mins_.data(), maxs_.data()));
    }
  } else {
    const std::span<const float> u = dgc_->momentum(layer), v = dgc_->residual(layer);
    const float m = options_.dgc.momentum;
    // As encode: local clipping scales the gradient first (the same float products).
    const float s = dgc_->clip_scale(grad, n);
    for (std::size_t i = 0; i < n; ++i) {
      const float g = s != 1.0f ? kernels::fmul(x[i], s) : x[i];
      x[i] = options_.dgc.nesterov ? kernels::dgc::corrected_velocity<true>(g, u[i], v[i], m)
                                   : kernels::dgc::corrected_velocity<false>(g, u[i], v[i], m);
    }
    lgreco_topk_errors(std::span<const float>(x, n), options_.densities, options_.dgc_sample,
                       std::span<double>(&table_.error_at(layer, 0), C), sample_);
  }
}

// The same profile on the layer's device, reading the inner compressor's state there; the
// row stays on the device until local_table().
void LgrecoCompressor::profile_on_device(std::size_t layer, TensorView grad) {
  GRADCOMM_CHECK(grad.dtype() == DType::kFloat32 && grad.device() == Device::kCuda, ErrorCode::kInvalidArgument,
                 "LgrecoCompressor::encode on rank ", rank_, ": layer ", layer, " ('", layers_[layer].name,
                 "') lives on CUDA device ", layers_[layer].device_index, "; gradient ", grad.describe());
  const auto* g = static_cast<const float*>(grad.data());
  if (quant_family()) {
    const bool residual = options_.quantize.error_feedback;
    device_->profile_quant(layer, g, residual ? quant_->device_->residual(layer) : nullptr);
  } else {
    const double limit = dgc_->clip_limit();
    const float* scale = limit > 0.0 ? dgc_->device_->clip_factor(layer, g, limit) : nullptr;
    device_->profile_dgc(layer, g, scale, dgc_->device_->momentum(layer), dgc_->device_->residual(layer),
                         options_.dgc.momentum, options_.dgc.nesterov);
  }
  if (std::find(device_rows_.begin(), device_rows_.end(), layer) == device_rows_.end()) device_rows_.push_back(layer);
}

EncodeResult LgrecoCompressor::encode(std::size_t layer, TensorView grad, TensorView payload) {
  if (layer < planned_.size() && planned_[layer] && profiles_step(step_) &&
      grad.numel() == layers_[layer].numel) {
    profile(layer, grad);
  }
  return inner().encode(layer, grad, payload);
}

void LgrecoCompressor::decode(std::size_t layer, TensorView received, TensorView out) {
  inner().decode(layer, received, out);
}

void LgrecoCompressor::on_step_skipped(std::size_t layer, TensorView own_payload) {
  inner().on_step_skipped(layer, own_payload);
}

void LgrecoCompressor::apply_plan(std::span<const std::uint32_t> choice) {
  GRADCOMM_CHECK(choice.size() == layers_.size(), ErrorCode::kSizeMismatch,
                 "LgrecoCompressor::apply_plan on rank ", rank_, ": ", choice.size(),
                 " choices for ", layers_.size(), " layers");
  for (std::size_t l = 0; l < choice.size(); ++l) {
    GRADCOMM_CHECK_ARG(choice[l] < num_candidates() && (planned_[l] || choice[l] == default_choice_[l]),
                       "LgrecoCompressor::apply_plan: layer ", l, " ('", layers_[l].name,
                       "') candidate ", choice[l], " of ", num_candidates(),
                       planned_[l] ? "" : " (a dense layer keeps its default)");
  }
  for (std::size_t l = 0; l < choice.size(); ++l) {
    if (planned_[l] && choice[l] != choice_[l]) {
      // Either keeps the layer's state (residual; DGC's u and v) across the change and
      // allocates nothing.
      if (quant_family()) {
        quant_->set_layer_bits(l, options_.bit_widths[choice[l]]);
      } else {
        dgc_->set_layer_density(l, options_.densities[choice[l]]);
      }
    }
    choice_[l] = choice[l];
  }
}

// State: "GCLG", version, layer count, the plan (one candidate per layer), then the inner
// compressor's blob, length-prefixed. Version 1 (one DGC blob per layer) is not read.
namespace {
constexpr std::uint32_t kStateMagic = 0x474c4347;  // "GCLG"
constexpr std::uint32_t kStateVersion = 2;
}  // namespace

std::vector<std::byte> LgrecoCompressor::save_state() const {
  std::vector<std::byte> out;
  detail::StateBlobWriter w(out);
  w.value(kStateMagic);
  w.value(kStateVersion);
  w.value(static_cast<std::uint64_t>(choice_.size()));
  w.bytes(choice_.data(), choice_.size() * sizeof(std::uint32_t));
  const std::vector<std::byte> blob = inner().save_state();
  w.value(static_cast<std::uint64_t>(blob.size()));
  w.bytes(blob.data(), blob.size());
  return out;
}

void LgrecoCompressor::load_state(std::span<const std::byte> blob) {
  detail::StateBlobReader r(blob, detail::concat("LgrecoCompressor::load_state on rank ", rank_));
  const auto magic = r.value<std::uint32_t>("the magic");
  const auto version = r.value<std::uint32_t>("the version");
  GRADCOMM_CHECK(magic == kStateMagic && version == kStateVersion, ErrorCode::kCorruptPayload,
                 "LgrecoCompressor::load_state: not an L-GreCo state (magic ", magic, ", version ", version, ")");
  const auto count = r.value<std::uint64_t>("the layer count");
  GRADCOMM_CHECK(count == layers_.size(), ErrorCode::kCorruptPayload, "LgrecoCompressor::load_state on rank ",
                 rank_, ": blob has ", count, " layers, this compressor ", layers_.size());
  std::vector<std::uint32_t> choice(layers_.size());
  r.bytes(choice.data(), choice.size() * sizeof(std::uint32_t), "the plan");
  const auto size = r.value<std::uint64_t>("the inner state's size");
  GRADCOMM_CHECK(size == r.left(), ErrorCode::kCorruptPayload, "LgrecoCompressor::load_state: inner state of ",
                 size, " bytes in the ", r.left(), " bytes left of the blob");
  const std::span<const std::byte> inner_blob = r.view(size, "the inner state");
  // Validates the plan first. The inner load then leaves the state as it was if it throws;
  // the plan, already applied, is a setting the caller reloads with a good blob.
  apply_plan(choice);
  inner().load_state(inner_blob);
}

}  // namespace gradcomm
