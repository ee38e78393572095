#include <algorithm>
#include <chrono>
#include <cmath>

#include "gradcomm/lgreco.h"
#include "kernels/cpu/dense_kernels.h"
#include "kernels/cpu/quantize_kernels.h"

namespace gradcomm {

const char* lgreco_family_name(LgrecoFamily family) noexcept {
  switch (family) {
    case LgrecoFamily::kQuantBits: return "quant";
  }
  return "unknown";
}

LgrecoFamily parse_lgreco_family(const std::string& name) {
  if (name == "quant") return LgrecoFamily::kQuantBits;
  GRADCOMM_THROW(ErrorCode::kInvalidArgument, "unknown L-GreCo family '", name, "' (expected quant)");
}

namespace {

QuantizeOptions inner_quantize_options(const LgrecoOptions& options) {
  QuantizeOptions q = options.quantize;
  q.bits = options.default_bits;
  q.max_bits = *std::max_element(options.bit_widths.begin(), options.bit_widths.end());
  return q;
}

}  // namespace

LgrecoCompressor::LgrecoCompressor(LgrecoOptions options) : options_(std::move(options)) {
  GRADCOMM_CHECK_ARG(options_.family == LgrecoFamily::kQuantBits, "LgrecoCompressor: unknown family ",
                     static_cast<int>(options_.family));
  const std::vector<int>& widths = options_.bit_widths;
  GRADCOMM_CHECK_ARG(!widths.empty() && widths.size() <= 255,
                     "LgrecoCompressor: ", widths.size(), " bit widths (1..255)");
  for (std::size_t i = 0; i < widths.size(); ++i) {
    GRADCOMM_CHECK_ARG(widths[i] >= 1 && widths[i] <= 8, "LgrecoCompressor: bit width ", widths[i],
                       " outside 1..8");
    GRADCOMM_CHECK_ARG(std::count(widths.begin(), widths.end(), widths[i]) == 1,
                       "LgrecoCompressor: bit width ", widths[i], " listed twice");
  }
  GRADCOMM_CHECK_ARG(std::count(widths.begin(), widths.end(), options_.default_bits) == 1,
                     "LgrecoCompressor: default_bits ", options_.default_bits,
                     " is not among the candidate bit widths");
  GRADCOMM_CHECK_ARG(options_.period >= 1, "LgrecoCompressor: period ", options_.period, " < 1");
  GRADCOMM_CHECK_ARG(options_.first_step >= 0, "LgrecoCompressor: first_step ", options_.first_step,
                     " < 0");
  GRADCOMM_CHECK_ARG(options_.bins >= 1 && options_.bins <= (1 << 24), "LgrecoCompressor: bins ",
                     options_.bins, " outside [1, 2^24]");
  quant_ = std::make_unique<QuantizeCompressor>(inner_quantize_options(options_));
}

LgrecoCompressor::~LgrecoCompressor() = default;

Compressor& LgrecoCompressor::inner() const { return *quant_; }

std::string LgrecoCompressor::name() const {
  return std::string("lgreco-") + lgreco_family_name(options_.family);
}

std::size_t LgrecoCompressor::num_candidates() const { return options_.bit_widths.size(); }

std::string LgrecoCompressor::candidate_name(std::size_t c) const {
  GRADCOMM_CHECK_ARG(c < num_candidates(), "LgrecoCompressor: candidate ", c, " of ", num_candidates());
  return std::to_string(options_.bit_widths[c]) + " bits";
}

void LgrecoCompressor::setup(std::span<const LayerSpec> layers, int world_size, int rank) {
  inner().setup(layers, world_size, rank);
  world_size_ = world_size;
  rank_ = rank;
  layers_.assign(layers.begin(), layers.end());
  const std::size_t L = layers.size(), C = num_candidates();
  const auto c0 = static_cast<std::uint32_t>(
      std::find(options_.bit_widths.begin(), options_.bit_widths.end(), options_.default_bits) -
      options_.bit_widths.begin());
  default_choice_.assign(L, c0);
  choice_ = default_choice_;
  planned_.assign(L, 0);
  table_ = LgrecoTable(L, C);
  std::size_t largest = 0;
  const std::size_t bucket = options_.quantize.bucket_size;
  for (std::size_t l = 0; l < L; ++l) {
    planned_[l] = quant_->is_quantized(l) ? 1 : 0;
    for (std::size_t c = 0; c < C; ++c) {
      // What the layer costs on the wire per step under each setting (the Exchanger's
      // allgather of the payload; a dense layer's allreduce whatever the setting).
      table_.bytes_at(l, c) =
          planned_[l] ? allgather_wire_bytes(quantize_payload_bytes(layers[l].numel, options_.bit_widths[c], bucket),
                                             world_size)
                      : allreduce_wire_bytes(layers[l].numel * sizeof(float), world_size);
      table_.error_at(l, c) = 0;
    }
    if (planned_[l]) largest = std::max(largest, layers[l].numel);
  }
  scratch_.assign(largest, 0.0f);
  mins_.assign(kernels::quant::num_buckets(largest, bucket), 0.0f);
  maxs_.assign(mins_.size(), 0.0f);
  table_layers_done_ = 0;
  table_step_ = -1;
  profiled_.assign(L, 0);
}

std::string LgrecoCompressor::settings_fingerprint() const {
  std::string widths;
  for (int b : options_.bit_widths) {
    if (!widths.empty()) widths += ',';
    widths += std::to_string(b);
  }
  return detail::concat("lgreco family=", lgreco_family_name(options_.family), " bits=", widths,
                        " default=", options_.default_bits, " period=", options_.period,
                        " first=", options_.first_step, " bins=", options_.bins, " | ",
                        inner().settings_fingerprint());
}

std::size_t LgrecoCompressor::max_payload_bytes(std::size_t layer) const {
  return inner().max_payload_bytes(layer);
}

LayerWire LgrecoCompressor::wire(std::size_t layer) const { return inner().wire(layer); }

bool LgrecoCompressor::profiles_step(std::int64_t step) const {
  return step >= options_.first_step && (step - options_.first_step + 1) % options_.period == 0;
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

// The error each bit width would make on x = gradient + residual, the error-fed input the
// quantizer is about to compress: nearest rounding exactly, stochastic in expectation.
// One min/max pass shared by all widths, then one pass per width; every `period` steps.
void LgrecoCompressor::profile(std::size_t layer, const float* grad) {
  const auto start = std::chrono::steady_clock::now();
  if (table_step_ != step_) {  // the first layer of this profiling step
    table_step_ = step_;
    table_layers_done_ = 0;
    std::fill(profiled_.begin(), profiled_.end(), 0);
  }
  const std::size_t n = layers_[layer].numel;
  float* x = scratch_.data();
  kernels::copy_zeroing_nonfinite(grad, x, n);
  const std::span<const float> residual = quant_->residual(layer);
  if (!residual.empty()) {
    for (std::size_t i = 0; i < n; ++i) x[i] += residual[i];
  }
  const std::size_t bucket = options_.quantize.bucket_size;
  const bool stochastic = options_.quantize.rounding == Rounding::kStochastic;
  kernels::bucket_min_max(x, n, bucket, mins_.data(), maxs_.data());
  for (std::size_t c = 0; c < num_candidates(); ++c) {
    table_.error_at(layer, c) = std::sqrt(kernels::quantize_squared_error(
        x, n, bucket, options_.bit_widths[c], stochastic, mins_.data(), maxs_.data()));
  }
  table_layers_done_ += profiled_[layer] ? 0 : 1;
  profiled_[layer] = 1;
  profile_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

EncodeResult LgrecoCompressor::encode(std::size_t layer, TensorView grad, TensorView payload) {
  if (layer < planned_.size() && planned_[layer] && profiles_step(step_) &&
      grad.numel() == layers_[layer].numel) {
    profile(layer, grad.span<const float>("gradient").data());
  }
  return inner().encode(layer, grad, payload);
}

void LgrecoCompressor::decode(std::size_t layer, TensorView received, TensorView out) {
  inner().decode(layer, received, out);
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
    // The quantizer keeps the layer's residual across a change of bits: nothing is lost.
    if (planned_[l]) quant_->set_layer_bits(l, options_.bit_widths[choice[l]]);
    choice_[l] = choice[l];
  }
}

// The inner compressor's state carries the per-layer settings (bits) with the residuals;
// the plan is read back from it.
std::vector<std::byte> LgrecoCompressor::save_state() const { return inner().save_state(); }

void LgrecoCompressor::load_state(std::span<const std::byte> blob) {
  inner().load_state(blob);
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    if (!planned_[l]) continue;
    const int bits = quant_->layer_bits(l);
    const auto it = std::find(options_.bit_widths.begin(), options_.bit_widths.end(), bits);
    GRADCOMM_CHECK(it != options_.bit_widths.end(), ErrorCode::kCorruptPayload,
                   "LgrecoCompressor::load_state on rank ", rank_, ": layer ", l, " ('",
                   layers_[l].name, "') has ", bits, " bits, not a candidate");
    choice_[l] = static_cast<std::uint32_t>(it - options_.bit_widths.begin());
  }
}

}  // namespace gradcomm
