#include "gradcomm/dense.h"

#include "kernels/cpu/dense_kernels.h"

namespace gradcomm {

DenseCompressor::DenseCompressor(DenseOptions options) : options_(options) {
  GRADCOMM_CHECK_ARG(options.wire_dtype == DType::kFloat32 || options.wire_dtype == DType::kFloat16,
                     "DenseCompressor: wire_dtype must be float32 or float16, got ",
                     dtype_name(options.wire_dtype));
}

void DenseCompressor::setup(std::span<const LayerSpec> layers, int world_size, int rank) {
  GRADCOMM_CHECK_ARG(world_size >= 1, "DenseCompressor: world size ", world_size, " < 1");
  GRADCOMM_CHECK_ARG(rank >= 0 && rank < world_size, "DenseCompressor: rank ", rank,
                     " is not in a world of ", world_size);
  world_size_ = world_size;
  numel_.clear();
  for (const LayerSpec& layer : layers) numel_.push_back(layer.numel);
}

std::string DenseCompressor::settings_fingerprint() const {
  return std::string("none wire=") + dtype_name(options_.wire_dtype);
}

std::size_t DenseCompressor::max_payload_bytes(std::size_t layer) const {
  return wire(layer).bytes();
}

LayerWire DenseCompressor::wire(std::size_t layer) const {
  return {Collective::kAllreduce, options_.wire_dtype, numel_.at(layer)};
}

EncodeResult DenseCompressor::encode(std::size_t layer, TensorView grad, TensorView payload) {
  const std::size_t n = numel_.at(layer);
  GRADCOMM_CHECK(grad.numel() == n && payload.numel() == n, ErrorCode::kSizeMismatch,
                 "DenseCompressor::encode layer ", layer, ": grad ", grad.describe(), ", payload ",
                 payload.describe(), ", layer has ", n, " elements");
  const float* in = grad.span<const float>("gradient").data();
  if (options_.wire_dtype == DType::kFloat16) {
    GRADCOMM_CHECK(payload.dtype() == DType::kFloat16, ErrorCode::kInvalidArgument, "payload dtype");
    return {kernels::to_half_zeroing_nonfinite(in, static_cast<std::uint16_t*>(payload.data()), n)};
  }
  return {kernels::copy_zeroing_nonfinite(in, payload.span<float>("payload").data(), n)};
}

void DenseCompressor::decode(std::size_t layer, TensorView received, TensorView out) {
  const std::size_t n = numel_.at(layer);
  GRADCOMM_CHECK(received.numel() == n && out.numel() == n, ErrorCode::kSizeMismatch,
                 "DenseCompressor::decode layer ", layer, ": received ", received.describe(),
                 ", out ", out.describe(), ", layer has ", n, " elements");
  const float inv = 1.0f / static_cast<float>(world_size_);
  float* dst = out.span<float>("output").data();
  if (received.dtype() == DType::kFloat16) {
    kernels::half_to_float_scaled(static_cast<const std::uint16_t*>(received.data()), inv, dst, n);
  } else {
    kernels::scale(received.span<const float>("received").data(), inv, dst, n);
  }
}

void DenseCompressor::load_state(std::span<const std::byte> blob) {
  GRADCOMM_CHECK(blob.empty(), ErrorCode::kCorruptPayload,
                 "DenseCompressor has no state, got a blob of ", blob.size(), " bytes");
}

}  // namespace gradcomm
