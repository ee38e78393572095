#include <cstring>

#include "compress/device_status.h"
#include "compress/quantize_device.h"
#include "core/state_blob.h"
#include "gradcomm/quantize.h"
#include "kernels/cpu/dense_kernels.h"
#include "kernels/cpu/quantize_kernels.h"

namespace gradcomm {

namespace quant = kernels::quant;

const char* rounding_name(Rounding rounding) noexcept {
  return rounding == Rounding::kStochastic ? "stochastic" : "nearest";
}

Rounding parse_rounding(const std::string& name) {
  if (name == "nearest") return Rounding::kNearest;
  if (name == "stochastic") return Rounding::kStochastic;
  GRADCOMM_THROW(ErrorCode::kInvalidArgument, "unknown rounding '", name,
                 "' (expected nearest or stochastic)");
}

std::size_t quantize_payload_bytes(std::size_t numel, int bits, std::size_t bucket_size) {
  GRADCOMM_CHECK_ARG(bits >= quant::kMinBits && bits <= quant::kMaxBits && bucket_size > 0,
                     "quantize_payload_bytes: bits ", bits, " (1..8), bucket_size ", bucket_size);
  return quant::payload_bytes(numel, bits, bucket_size);
}

namespace {
constexpr std::size_t kMaxBucket = std::size_t{1} << 20;
}  // namespace

QuantizeCompressor::QuantizeCompressor(QuantizeOptions options) : options_(options) {
  if (options_.max_bits == 0) options_.max_bits = options_.bits;
  GRADCOMM_CHECK_ARG(options_.bits >= quant::kMinBits && options_.bits <= quant::kMaxBits,
                     "QuantizeCompressor: bits ", options_.bits, " outside 1..8");
  GRADCOMM_CHECK_ARG(options_.max_bits >= options_.bits && options_.max_bits <= quant::kMaxBits,
                     "QuantizeCompressor: max_bits ", options_.max_bits, " outside [bits=",
                     options_.bits, ", 8]");
  GRADCOMM_CHECK_ARG(options_.bucket_size >= 8 && options_.bucket_size % 8 == 0 &&
                         options_.bucket_size <= kMaxBucket,
                     "QuantizeCompressor: bucket_size ", options_.bucket_size,
                     " must be a multiple of 8 in [8, ", kMaxBucket,
                     "] (buckets start on a byte of the packed codes)");
  GRADCOMM_CHECK_ARG(options_.rounding == Rounding::kNearest ||
                         options_.rounding == Rounding::kStochastic,
                     "QuantizeCompressor: unknown rounding ", static_cast<int>(options_.rounding));
  const std::size_t ws = kernels::quantize_workspace_bytes(options_.bucket_size);
  workspace_.resize((ws + sizeof(float) - 1) / sizeof(float));
}

QuantizeCompressor::~QuantizeCompressor() = default;
QuantizeCompressor::QuantizeCompressor(QuantizeCompressor&&) noexcept = default;
QuantizeCompressor& QuantizeCompressor::operator=(QuantizeCompressor&&) noexcept = default;

void QuantizeCompressor::setup(std::span<const LayerSpec> layers, int world_size, int rank) {
  GRADCOMM_CHECK_ARG(world_size >= 1 && rank >= 0 && rank < world_size,
                     "QuantizeCompressor: rank ", rank, " of world size ", world_size);
  world_size_ = world_size;
  rank_ = rank;
  layers_.clear();
  layers_.reserve(layers.size());
  device_.reset();
  host_residuals_.clear();
  std::vector<detail::QuantizeDevice::LayerShape> on_device;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const LayerSpec& spec = layers[i];
    Layer l;
    l.name = spec.name;
    l.numel = spec.numel;
    l.quantized = !spec.force_dense && (options_.quantize_1d || !is_dense_by_default(spec));
    l.error_feedback = l.quantized && options_.error_feedback;
    l.bits = options_.bits;
    l.device = spec.device;
    l.device_index = spec.device_index;
    if (l.device == Device::kCuda) {
      on_device.push_back({i, spec.numel, spec.device_index, l.error_feedback});
    } else if (l.error_feedback) {
      l.residual.assign(spec.numel, 0.0f);
    }
    layers_.push_back(std::move(l));
  }
  if (!on_device.empty()) {
    device_ = detail::QuantizeDevice::create(on_device, layers.size(), rank);
    device_->set_execution(execution_);
  }
}

void QuantizeCompressor::set_execution(const ExecutionContext& context) {
  execution_ = context;
  if (device_) device_->set_execution(context);
}

void QuantizeCompressor::check_device(const Layer& l, std::size_t layer, TensorView tensor, const char* call,
                                      const char* role) const {
  GRADCOMM_CHECK(tensor.empty() || (tensor.device() == l.device &&
                                    (l.device == Device::kCpu || tensor.device_index() == l.device_index)),
                 ErrorCode::kInvalidArgument, "QuantizeCompressor::", call, " on rank ", rank_, ": layer ", layer,
                 " ('", l.name, "') ", role, " ", tensor.describe(), " is not where the layer lives (",
                 device_name(l.device), l.device == Device::kCuda ? detail::concat(" ", l.device_index) : "", ")");
}

std::string QuantizeCompressor::settings_fingerprint() const {
  std::string text = detail::concat("quantize bits=", options_.bits, " max_bits=", options_.max_bits,
                                    " bucket=", options_.bucket_size, " rounding=",
                                    rounding_name(options_.rounding), " ef=", options_.error_feedback,
                                    " seed=", options_.seed, " quantize_1d=", options_.quantize_1d);
  return text;
}

const QuantizeCompressor::Layer& QuantizeCompressor::layer_at(std::size_t layer,
                                                              const char* where) const {
  GRADCOMM_CHECK(layer < layers_.size(), ErrorCode::kInvalidArgument, "QuantizeCompressor::", where,
                 ": layer ", layer, " out of range (", layers_.size(), " layers set up)");
  return layers_[layer];
}

bool QuantizeCompressor::is_quantized(std::size_t layer) const {
  return layer_at(layer, "is_quantized").quantized;
}

int QuantizeCompressor::layer_bits(std::size_t layer) const {
  return layer_at(layer, "layer_bits").bits;
}

std::span<const float> QuantizeCompressor::residual(std::size_t layer) const {
  const Layer& l = layer_at(layer, "residual");
  if (l.device != Device::kCuda || !l.error_feedback) return l.residual;
  host_residuals_.resize(layers_.size());
  device_->copy_out(layer, host_residuals_[layer]);
  return host_residuals_[layer];
}

void QuantizeCompressor::set_layer_bits(std::size_t layer, int bits) {
  const Layer& l = layer_at(layer, "set_layer_bits");
  GRADCOMM_CHECK_ARG(bits >= quant::kMinBits && bits <= options_.max_bits,
                     "QuantizeCompressor::set_layer_bits: layer ", layer, " ('", l.name, "') bits ",
                     bits, " outside [1, max_bits=", options_.max_bits, "]");
  GRADCOMM_CHECK_ARG(l.quantized, "QuantizeCompressor::set_layer_bits: layer ", layer, " ('", l.name,
                     "') is allreduced densely, it has no bit width");
  layers_[layer].bits = bits;
}

std::size_t QuantizeCompressor::max_payload_bytes(std::size_t layer) const {
  const Layer& l = layer_at(layer, "max_payload_bytes");
  return l.quantized ? quant::payload_bytes(l.numel, options_.max_bits, options_.bucket_size)
                     : l.numel * sizeof(float);
}

LayerWire QuantizeCompressor::wire(std::size_t layer) const {
  const Layer& l = layer_at(layer, "wire");
  if (!l.quantized) return {Collective::kAllreduce, DType::kFloat32, l.numel};
  return {Collective::kAllgather, DType::kUInt8,
          quant::payload_bytes(l.numel, l.bits, options_.bucket_size)};
}

EncodeResult QuantizeCompressor::encode(std::size_t layer, TensorView grad, TensorView payload) {
  const Layer& l = layer_at(layer, "encode");
  const LayerWire w = wire(layer);
  GRADCOMM_CHECK(grad.numel() == l.numel && payload.numel() == w.count && payload.dtype() == w.dtype,
                 ErrorCode::kSizeMismatch, "QuantizeCompressor::encode on rank ", rank_, ": layer ",
                 layer, " ('", l.name, "', ", l.numel, " elements, ", l.bits, " bits) got grad ",
                 grad.describe(), " and payload ", payload.describe(), ", expected ",
                 dtype_name(w.dtype), "[", w.count, "]");
  GRADCOMM_CHECK(grad.dtype() == DType::kFloat32, ErrorCode::kInvalidArgument, "QuantizeCompressor::encode on rank ",
                 rank_, ": layer ", layer, " ('", l.name, "') gradient ", grad.describe(), ", expected float32");
  check_device(l, layer, grad, "encode", "gradient");
  check_device(l, layer, payload, "encode", "payload");
  const auto* g = static_cast<const float*>(grad.data());
  if (!l.quantized) {
    auto* out = static_cast<float*>(payload.data());
    if (l.device == Device::kCuda) return {device_->encode_dense(layer, g, out)};
    return {kernels::copy_zeroing_nonfinite(g, out, l.numel)};
  }
  kernels::QuantizeParams params;
  params.bits = l.bits;
  params.bucket = options_.bucket_size;
  params.stochastic = options_.rounding == Rounding::kStochastic;
  params.rng_key = quant::rng_key(options_.seed, rank_, layer, step_);
  auto* bytes = static_cast<std::uint8_t*>(payload.data());
  if (l.device == Device::kCuda) return {device_->encode(layer, g, params, bytes)};
  float* residual = l.error_feedback ? layers_[layer].residual.data() : nullptr;
  return {kernels::quantize_error_feedback(g, residual, l.numel, params, bytes, workspace_.data())};
}

void QuantizeCompressor::decode(std::size_t layer, TensorView received, TensorView out) {
  const Layer& l = layer_at(layer, "decode");
  const LayerWire w = wire(layer);
  const std::size_t p = static_cast<std::size_t>(world_size_);
  const std::size_t expected = l.quantized ? p * w.count : w.count;
  GRADCOMM_CHECK(received.numel() == expected && received.dtype() == w.dtype && out.numel() == l.numel,
                 ErrorCode::kSizeMismatch, "QuantizeCompressor::decode on rank ", rank_, ": layer ",
                 layer, " ('", l.name, "', ", l.numel, " elements, ", l.bits, " bits, ", p,
                 " ranks) got ", received.describe(), " expected ", dtype_name(w.dtype), "[",
                 expected, "], out ", out.describe());
  GRADCOMM_CHECK(out.dtype() == DType::kFloat32, ErrorCode::kInvalidArgument, "QuantizeCompressor::decode on rank ",
                 rank_, ": layer ", layer, " ('", l.name, "') output ", out.describe(), ", expected float32");
  check_device(l, layer, received, "decode", "received");
  check_device(l, layer, out, "decode", "output");
  auto* dst = static_cast<float*>(out.data());
  const float inv = 1.0f / static_cast<float>(world_size_);
  if (!l.quantized) {
    const auto* sum = static_cast<const float*>(received.data());
    if (l.device == Device::kCuda) {
      device_->decode_dense(layer, sum, inv, dst);
    } else {
      kernels::scale(sum, inv, dst, l.numel);
    }
    return;
  }
  const auto* bytes = static_cast<const std::uint8_t*>(received.data());
  const char* why = "";
  int bad = -1;
  if (l.device == Device::kCuda) {
    const detail::QuantizeDevice::Corrupt corrupt =
        device_->decode(layer, bytes, w.count, world_size_, l.bits, options_.bucket_size, inv, dst);
    if (corrupt.rank != detail::DeviceStatus::kNoCorruptRank) {
      bad = static_cast<int>(corrupt.rank);
      why = quant::payload_fault_text(static_cast<quant::PayloadFault>(corrupt.fault % 8));
    }
  } else {
    bad = kernels::find_corrupt_payload(bytes, w.count, world_size_, l.numel, l.bits, options_.bucket_size, &why);
  }
  GRADCOMM_CHECK(bad < 0, ErrorCode::kCorruptPayload, "QuantizeCompressor::decode on rank ", rank_,
                 ": layer ", layer, " ('", l.name, "', ", l.numel, " elements, ", l.bits,
                 " bits, bucket ", options_.bucket_size, "): payload of rank ", bad, " (",
                 w.count, " bytes): ", why);
  if (l.device == Device::kCpu) {
    kernels::dequantize_sum(bytes, w.count, world_size_, l.numel, l.bits, options_.bucket_size, inv, dst,
                            workspace_.data());
  }
}

// A skipped step: the residual kept x - (min + q*unit); adding back the dequantized own
// payload (the same arithmetic as the encoder) returns x = gradient + old residual to it.
void QuantizeCompressor::on_step_skipped(std::size_t layer, TensorView own_payload) {
  layer_at(layer, "on_step_skipped");  // checks the index
  Layer& l = layers_[layer];
  if (!l.error_feedback) return;
  const LayerWire w = wire(layer);
  GRADCOMM_CHECK(own_payload.numel() == w.count && own_payload.dtype() == w.dtype, ErrorCode::kInvalidArgument,
                 "QuantizeCompressor::on_step_skipped on rank ", rank_, ": layer ", layer, " ('", l.name,
                 "') payload ", own_payload.describe(), ", expected ", dtype_name(w.dtype), "[", w.count, "]");
  check_device(l, layer, own_payload, "on_step_skipped", "payload");
  const auto* own = static_cast<const std::uint8_t*>(own_payload.data());
  if (l.device == Device::kCuda) {
    device_->restore(layer, own, l.bits, options_.bucket_size);
    return;
  }
  std::vector<float> sent(l.numel);  // a skipped step is rare: allocating here is fine
  kernels::dequantize_sum(own, w.count, 1, l.numel, l.bits, options_.bucket_size, 1.0f, sent.data(),
                          workspace_.data());
  for (std::size_t i = 0; i < l.numel; ++i) l.residual[i] = kernels::fadd(l.residual[i], sent[i]);
}

// State blob: "GCQZ", version, layer count, step, then per layer numel, bits and the
// residual (numel floats, or none without error feedback / for a dense layer).
namespace {
constexpr std::uint32_t kStateMagic = 0x5a514347;  // "GCQZ"
constexpr std::uint32_t kStateVersion = 1;

}  // namespace

std::vector<std::byte> QuantizeCompressor::save_state() const {
  std::vector<std::byte> out;
  detail::StateBlobWriter w(out);
  w.value(kStateMagic);
  w.value(kStateVersion);
  w.value(static_cast<std::uint64_t>(layers_.size()));
  w.value(static_cast<std::int64_t>(step_));
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const Layer& l = layers_[i];
    const std::span<const float> r = residual(i);
    w.value(static_cast<std::uint64_t>(l.numel));
    w.value(static_cast<std::int32_t>(l.bits));
    w.value(static_cast<std::uint64_t>(r.size()));
    w.bytes(r.data(), r.size() * sizeof(float));
  }
  return out;
}

void QuantizeCompressor::load_state(std::span<const std::byte> blob) {
  detail::StateBlobReader in(blob, detail::concat("QuantizeCompressor::load_state on rank ", rank_));
  const auto magic = in.value<std::uint32_t>("magic");
  const auto version = in.value<std::uint32_t>("version");
  GRADCOMM_CHECK(magic == kStateMagic && version == kStateVersion, ErrorCode::kCorruptPayload,
                 "QuantizeCompressor::load_state: not a quantizer state (magic ", magic,
                 ", version ", version, ")");
  const auto count = in.value<std::uint64_t>("layer count");
  GRADCOMM_CHECK(count == layers_.size(), ErrorCode::kCorruptPayload,
                 "QuantizeCompressor::load_state on rank ", rank_, ": blob has ", count,
                 " layers, this compressor ", layers_.size());
  const auto step = in.value<std::int64_t>("step");
  // Validate everything before changing anything: a bad blob leaves the state as it was.
  std::vector<int> bits(layers_.size());
  std::vector<std::span<const std::byte>> residuals(layers_.size());
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const Layer& l = layers_[i];
    const auto numel = in.value<std::uint64_t>("numel");
    bits[i] = in.value<std::int32_t>("bits");
    const auto residual = in.value<std::uint64_t>("residual size");
    const std::size_t expected = l.error_feedback ? l.numel : 0;
    GRADCOMM_CHECK(numel == l.numel && residual == expected &&
                       bits[i] >= quant::kMinBits && bits[i] <= options_.max_bits &&
                       (l.quantized || bits[i] == options_.bits),
                   ErrorCode::kCorruptPayload, "QuantizeCompressor::load_state on rank ", rank_,
                   ": layer ", i, " ('", l.name, "') has ", l.numel, " elements and a residual of ",
                   expected, "; the blob says ", numel, " elements, residual ", residual,
                   ", bits ", bits[i], " (max ", options_.max_bits, ")");
    residuals[i] = in.view(residual * sizeof(float), "a layer's residual");
  }
  in.finish();
  step_ = step;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    layers_[i].bits = bits[i];
    // An empty residual (a dense layer) has data() == nullptr: memcpy must not see it (UBSan).
    if (residuals[i].empty()) continue;
    if (layers_[i].device == Device::kCuda) {
      device_->copy_in(i, residuals[i].data(), residuals[i].size());
    } else {
      std::memcpy(layers_[i].residual.data(), residuals[i].data(), residuals[i].size());
    }
  }
}

}  // namespace gradcomm
