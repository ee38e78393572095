// QuantizeCompressor's CUDA layers (quantize_device.h): device memory and kernel calls
// only; the settings (bits, bucket, the RNG key) come from the compressor.

#include "compress/quantize_device.h"

#include "compress/device_status.h"
#include "gradcomm/error.h"

#if defined(GRADCOMM_HAVE_CUDA)
#include <map>

#include "kernels/cuda/dense_kernels.cuh"
#include "kernels/cuda/device_buffer.cuh"
#include "kernels/cuda/quantize_kernels.cuh"
#endif

namespace gradcomm::detail {

#if defined(GRADCOMM_HAVE_CUDA)

namespace {

namespace cuda = kernels::cuda;

class CudaQuantizeDevice final : public QuantizeDevice {
 public:
  CudaQuantizeDevice(std::span<const LayerShape> shapes, std::size_t num_layers) : layers_(num_layers) {
    for (const LayerShape& shape : shapes) {
      Layer& l = layers_.at(shape.layer);
      l.present = true;
      l.numel = shape.numel;
      l.device = shape.device;
      if (shape.residual) l.residual = cuda::DeviceBuffer(shape.numel * sizeof(float), shape.device);
      if (!status_.contains(shape.device)) status_.emplace(shape.device, std::make_unique<DeviceStatus>(shape.device));
    }
  }

  void set_execution(const ExecutionContext& context) override { execution_ = context; }

  std::size_t encode(std::size_t layer, const float* grad, const kernels::QuantizeParams& params,
                     std::uint8_t* payload) override {
    const Layer& l = at(layer);
    cuda::ScopedDevice on(l.device);
    DeviceStatus& status = *status_.at(l.device);
    cuda::quantize_error_feedback(grad, l.residual.as<float>(), l.numel, params, payload,
                                  status.nonfinite_word(execution_, layer), stream());
    return status.nonfinite_after(execution_);
  }

  std::size_t encode_dense(std::size_t layer, const float* grad, float* payload) override {
    const Layer& l = at(layer);
    cuda::ScopedDevice on(l.device);
    DeviceStatus& status = *status_.at(l.device);
    cuda::copy_zeroing_nonfinite(grad, payload, l.numel, status.nonfinite_word(execution_, layer), stream());
    return status.nonfinite_after(execution_);
  }

  Corrupt decode(std::size_t layer, const std::uint8_t* received, std::size_t stride, int ranks, int bits,
                 std::size_t bucket, float inv_ranks, float* out) override {
    const Layer& l = at(layer);
    cuda::ScopedDevice on(l.device);
    DeviceStatus& status = *status_.at(l.device);
    std::uint32_t* bad_rank = status.corrupt_word(execution_, layer);
    std::uint32_t* fault = status.reason_word(execution_);
    cuda::find_corrupt_payload(received, stride, ranks, l.numel, bits, bucket, bad_rank, fault, stream());
    cuda::dequantize_sum(received, stride, ranks, l.numel, bits, bucket, inv_ranks, out, bad_rank, false,
                         stream());
    Corrupt corrupt;
    corrupt.rank = status.corrupt_after(execution_);
    if (corrupt.rank != DeviceStatus::kNoCorruptRank) corrupt.fault = status.reason_after(execution_);
    return corrupt;
  }

  void decode_dense(std::size_t layer, const float* received, float inv_ranks, float* out) override {
    const Layer& l = at(layer);
    cuda::ScopedDevice on(l.device);
    cuda::scale(received, inv_ranks, out, l.numel, stream());
  }

  void restore(std::size_t layer, const std::uint8_t* own_payload, int bits, std::size_t bucket) override {
    const Layer& l = at(layer);
    cuda::ScopedDevice on(l.device);
    cuda::dequantize_sum(own_payload, 0, 1, l.numel, bits, bucket, 1.0f, l.residual.as<float>(), nullptr, true,
                         stream());
  }

  float* residual(std::size_t layer) const override { return at(layer).residual.as<float>(); }
  int device_of(std::size_t layer) const override { return at(layer).device; }

  void copy_out(std::size_t layer, std::vector<float>& residual) const override {
    const Layer& l = at(layer);
    cuda::ScopedDevice on(l.device);
    residual.resize(l.residual.bytes() / sizeof(float));
    cuda::copy_to_host_sync(residual.data(), l.residual.data(), l.residual.bytes(), stream());
  }

  void copy_in(std::size_t layer, const void* residual, std::size_t bytes) override {
    const Layer& l = at(layer);
    GRADCOMM_CHECK(bytes == l.residual.bytes(), ErrorCode::kInternal, "QuantizeCompressor: loading ", bytes,
                   " bytes into a residual of ", l.residual.bytes());
    cuda::ScopedDevice on(l.device);
    cuda::copy_to_device_sync(l.residual.data(), residual, bytes, stream());
  }

 private:
  struct Layer {
    bool present = false;
    std::size_t numel = 0;
    int device = 0;
    cuda::DeviceBuffer residual;  // empty without error feedback or for a dense layer
  };

  const Layer& at(std::size_t layer) const {
    GRADCOMM_CHECK(layer < layers_.size() && layers_[layer].present, ErrorCode::kInternal,
                   "QuantizeCompressor: layer ", layer, " is not a CUDA layer");
    return layers_[layer];
  }
  void* stream() const { return execution_.cuda_stream; }

  std::vector<Layer> layers_;
  std::map<int, std::unique_ptr<DeviceStatus>> status_;
  ExecutionContext execution_;
};

}  // namespace

std::unique_ptr<QuantizeDevice> QuantizeDevice::create(std::span<const LayerShape> layers, std::size_t num_layers,
                                                       int rank) {
  (void)rank;
  return std::make_unique<CudaQuantizeDevice>(layers, num_layers);
}

#else

std::unique_ptr<QuantizeDevice> QuantizeDevice::create(std::span<const LayerShape>, std::size_t, int rank) {
  throw_without_cuda("QuantizeCompressor", rank);
}

#endif

}  // namespace gradcomm::detail
