#include "gradcomm/dense.h"

#include <vector>

#include "compress/dense_device.h"
#include "kernels/cpu/dense_kernels.h"

namespace gradcomm {

DenseCompressor::DenseCompressor(DenseOptions options) : options_(options) {
  GRADCOMM_CHECK_ARG(options.wire_dtype == DType::kFloat32 || options.wire_dtype == DType::kFloat16,
                     "DenseCompressor: wire_dtype must be float32 or float16, got ",
                     dtype_name(options.wire_dtype));
}

DenseCompressor::~DenseCompressor() = default;
DenseCompressor::DenseCompressor(DenseCompressor&&) noexcept = default;
DenseCompressor& DenseCompressor::operator=(DenseCompressor&&) noexcept = default;

void DenseCompressor::setup(std::span<const LayerSpec> layers, int world_size, int rank) {
  GRADCOMM_CHECK_ARG(world_size >= 1, "DenseCompressor: world size ", world_size, " < 1");
  GRADCOMM_CHECK_ARG(rank >= 0 && rank < world_size, "DenseCompressor: rank ", rank,
                     " is not in a world of ", world_size);
  world_size_ = world_size;
  rank_ = rank;
  layers_.assign(layers.begin(), layers.end());
  std::vector<int> devices;
  for (const LayerSpec& layer : layers) {
    if (layer.device == Device::kCuda) devices.push_back(layer.device_index);
  }
  device_.reset();
  if (!devices.empty()) {
    device_ = detail::DenseDevice::create(devices, rank);
    device_->set_execution(execution_);
  }
}

void DenseCompressor::set_execution(const ExecutionContext& context) {
  execution_ = context;
  if (device_) device_->set_execution(context);
}

std::string DenseCompressor::settings_fingerprint() const {
  return std::string("none wire=") + dtype_name(options_.wire_dtype);
}

std::size_t DenseCompressor::max_payload_bytes(std::size_t layer) const {
  return wire(layer).bytes();
}

LayerWire DenseCompressor::wire(std::size_t layer) const {
  return {Collective::kAllreduce, options_.wire_dtype, layers_.at(layer).numel};
}

std::size_t DenseCompressor::checked_numel(std::size_t layer, TensorView tensor, const char* call,
                                           const char* role) const {
  const LayerSpec& l = layers_.at(layer);
  GRADCOMM_CHECK(tensor.numel() == l.numel, ErrorCode::kSizeMismatch, "DenseCompressor::", call, " layer ",
                 layer, ": ", role, " ", tensor.describe(), ", layer has ", l.numel, " elements");
  GRADCOMM_CHECK(tensor.empty() || (tensor.device() == l.device &&
                                    (l.device == Device::kCpu || tensor.device_index() == l.device_index)),
                 ErrorCode::kInvalidArgument, "DenseCompressor::", call, " on rank ", rank_, " layer ", layer, ": ",
                 role, " ", tensor.describe(), " is not where the layer lives (", device_name(l.device), ")");
  return l.numel;
}

EncodeResult DenseCompressor::encode(std::size_t layer, TensorView grad, TensorView payload) {
  const std::size_t n = checked_numel(layer, grad, "encode", "grad");
  checked_numel(layer, payload, "encode", "payload");
  GRADCOMM_CHECK(grad.dtype() == DType::kFloat32, ErrorCode::kInvalidArgument, "DenseCompressor::encode layer ",
                 layer, ": gradient ", grad.describe(), ", expected float32");
  GRADCOMM_CHECK(payload.dtype() == options_.wire_dtype, ErrorCode::kInvalidArgument,
                 "DenseCompressor::encode layer ", layer, ": payload ", payload.describe(), ", expected ",
                 dtype_name(options_.wire_dtype));
  const auto* in = static_cast<const float*>(grad.data());
  const bool half = options_.wire_dtype == DType::kFloat16;
  if (layers_[layer].device == Device::kCuda) {
    return {device_->encode(layer, layers_[layer].device_index, in, payload.data(), half, n)};
  }
  if (half) return {kernels::to_half_zeroing_nonfinite(in, static_cast<std::uint16_t*>(payload.data()), n)};
  return {kernels::copy_zeroing_nonfinite(in, static_cast<float*>(payload.data()), n)};
}

void DenseCompressor::decode(std::size_t layer, TensorView received, TensorView out) {
  const std::size_t n = checked_numel(layer, received, "decode", "received");
  checked_numel(layer, out, "decode", "out");
  GRADCOMM_CHECK(out.dtype() == DType::kFloat32 &&
                     (received.dtype() == DType::kFloat32 || received.dtype() == DType::kFloat16),
                 ErrorCode::kInvalidArgument, "DenseCompressor::decode layer ", layer, ": received ",
                 received.describe(), ", out ", out.describe());
  const float inv = 1.0f / static_cast<float>(world_size_);
  auto* dst = static_cast<float*>(out.data());
  const bool half = received.dtype() == DType::kFloat16;
  if (layers_[layer].device == Device::kCuda) {
    device_->decode(layers_[layer].device_index, received.data(), half, inv, dst, n);
    return;
  }
  if (half) {
    kernels::half_to_float_scaled(static_cast<const std::uint16_t*>(received.data()), inv, dst, n);
  } else {
    kernels::scale(static_cast<const float*>(received.data()), inv, dst, n);
  }
}

void DenseCompressor::load_state(std::span<const std::byte> blob) {
  GRADCOMM_CHECK(blob.empty(), ErrorCode::kCorruptPayload,
                 "DenseCompressor has no state, got a blob of ", blob.size(), " bytes");
}

}  // namespace gradcomm
