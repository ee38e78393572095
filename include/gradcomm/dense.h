// DenseCompressor: no compression. Gradients are allreduced (fp32, or fp16 on the wire)
// and averaged; the baseline every compressor is measured against.
#pragma once

#include <memory>

#include "gradcomm/compressor.h"

namespace gradcomm {

struct DenseOptions {
  DType wire_dtype = DType::kFloat32;  // kFloat32 or kFloat16
};

namespace detail {
class DenseDevice;
}  // namespace detail

// A layer on a CUDA device (LayerSpec::device) is copied and averaged by kernels on the
// ExecutionContext's stream, its non-finite count added to the context's device array:
// no allocation and no wait for the device in a step.
class DenseCompressor final : public Compressor {
 public:
  explicit DenseCompressor(DenseOptions options = {});
  ~DenseCompressor() override;
  DenseCompressor(DenseCompressor&&) noexcept;
  DenseCompressor& operator=(DenseCompressor&&) noexcept;

  std::string name() const override { return "none"; }
  void setup(std::span<const LayerSpec> layers, int world_size, int rank) override;
  std::string settings_fingerprint() const override;
  std::size_t max_payload_bytes(std::size_t layer) const override;
  LayerWire wire(std::size_t layer) const override;
  EncodeResult encode(std::size_t layer, TensorView grad, TensorView payload) override;
  void decode(std::size_t layer, TensorView received, TensorView out) override;
  void set_execution(const ExecutionContext& context) override;
  std::vector<std::byte> save_state() const override { return {}; }
  void load_state(std::span<const std::byte> blob) override;

 private:
  // The layer's size, after checking that `tensor` (one of `call`'s) fits and lives where
  // the layer does.
  std::size_t checked_numel(std::size_t layer, TensorView tensor, const char* call, const char* role) const;

  DenseOptions options_;
  std::vector<LayerSpec> layers_;
  int world_size_ = 1;
  int rank_ = 0;
  std::unique_ptr<detail::DenseDevice> device_;  // the CUDA layers (null without any)
  ExecutionContext execution_;
};

}  // namespace gradcomm
