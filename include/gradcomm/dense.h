// DenseCompressor: no compression. Gradients are allreduced (fp32, or fp16 on the wire)
// and averaged; the baseline every compressor is measured against.
#pragma once

#include "gradcomm/compressor.h"

namespace gradcomm {

struct DenseOptions {
  DType wire_dtype = DType::kFloat32;  // kFloat32 or kFloat16
};

class DenseCompressor final : public Compressor {
 public:
  explicit DenseCompressor(DenseOptions options = {});

  std::string name() const override { return "none"; }
  void setup(std::span<const LayerSpec> layers, int world_size, int rank) override;
  std::string settings_fingerprint() const override;
  std::size_t max_payload_bytes(std::size_t layer) const override;
  LayerWire wire(std::size_t layer) const override;
  EncodeResult encode(std::size_t layer, TensorView grad, TensorView payload) override;
  void decode(std::size_t layer, TensorView received, TensorView out) override;
  std::vector<std::byte> save_state() const override { return {}; }
  void load_state(std::span<const std::byte> blob) override;

 private:
  DenseOptions options_;
  std::vector<std::size_t> numel_;
  int world_size_ = 1;
};

}  // namespace gradcomm
