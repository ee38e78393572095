// QuantizeCompressor: bucketed max-min k-bit quantization (CGX style) with error feedback.
//
// Per layer and step: x = gradient + residual; per bucket of `bucket_size` elements send
// min and unit = (max - min) / (2^bits - 1) and one `bits`-bit code per element,
// q = floor((x - min) / unit + r) with r = 1/2 (nearest) or uniform in [0, 1)
// (stochastic, unbiased); the residual keeps x - (min + q * unit). Payloads are not
// summable, so they travel by allgather; every rank dequantizes all of them and sums in
// rank order, so every rank ends with bitwise the same update (docs/algorithms/lgreco.md,
// "The k-bit quantizer").
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "gradcomm/compressor.h"

namespace gradcomm {

enum class Rounding : std::uint8_t {
  kNearest,     // r = 1/2: error at most unit/2 per element, deterministic
  kStochastic,  // r uniform from a counter-based RNG of (seed, rank, layer, step, index)
};
const char* rounding_name(Rounding rounding) noexcept;
Rounding parse_rounding(const std::string& name);  // "nearest" or "stochastic"

struct QuantizeOptions {
  int bits = 4;                    // 1..8 bits per element on the wire
  std::size_t bucket_size = 512;   // elements sharing one (min, unit); multiple of 8, <= 2^20
  Rounding rounding = Rounding::kNearest;
  bool error_feedback = true;      // keep what was not sent in a per-layer residual
  std::uint64_t seed = 0;          // stochastic rounding only
  // The most bits set_layer_bits() may give a layer (sizes the workspace); 0: `bits`.
  int max_bits = 0;
  // Layers that is_dense_by_default() (1-D: biases, norms) are allreduced in fp32 unless
  // this is set; they are small and sensitive, as in the DGC reference.
  bool quantize_1d = false;
};

// Bytes of one layer's payload: 8 header bytes, 8 per bucket, packed codes padded to 8.
std::size_t quantize_payload_bytes(std::size_t numel, int bits, std::size_t bucket_size);

namespace detail {
class QuantizeDevice;
}  // namespace detail

// A layer on a CUDA device (LayerSpec::device) keeps its residual there and quantizes,
// dequantizes and restores it with kernels on the ExecutionContext's stream (bitwise the
// CPU's payload, residual and sum): no allocation and no wait for the device in a step.
// A received payload is checked on the device; a bad one leaves the update 0 and is
// reported through ExecutionContext::corrupt_payloads (or thrown, waiting for the device,
// without it). save_state/load_state copy the residual (they wait).
class QuantizeCompressor final : public Compressor {
 public:
  explicit QuantizeCompressor(QuantizeOptions options = {});
  ~QuantizeCompressor() override;
  QuantizeCompressor(QuantizeCompressor&&) noexcept;
  QuantizeCompressor& operator=(QuantizeCompressor&&) noexcept;

  std::string name() const override { return "quantize"; }
  void setup(std::span<const LayerSpec> layers, int world_size, int rank) override;
  std::string settings_fingerprint() const override;
  std::size_t max_payload_bytes(std::size_t layer) const override;
  LayerWire wire(std::size_t layer) const override;
  EncodeResult encode(std::size_t layer, TensorView grad, TensorView payload) override;
  void decode(std::size_t layer, TensorView received, TensorView out) override;
  void on_step_skipped(std::size_t layer, TensorView own_payload) override;
  void set_execution(const ExecutionContext& context) override;
  void set_step(std::int64_t step) override { step_ = step; }
  std::vector<std::byte> save_state() const override;
  void load_state(std::span<const std::byte> blob) override;

  const QuantizeOptions& options() const noexcept { return options_; }
  std::size_t num_layers() const noexcept { return layers_.size(); }
  // Whether `layer` is quantized (false: allreduced in fp32).
  bool is_quantized(std::size_t layer) const;
  // Per-layer bit width, for L-GreCo. Takes effect at the next encode; the residual is
  // kept, so changing the setting loses nothing. Must be the same on every rank.
  void set_layer_bits(std::size_t layer, int bits);
  int layer_bits(std::size_t layer) const;
  // What error feedback holds for `layer` (empty without error feedback or for a dense
  // layer): the part of past inputs not yet sent. For a CUDA layer, a host copy made by
  // the call (which waits for the device), valid until the next call for that layer.
  std::span<const float> residual(std::size_t layer) const;

 private:
  friend class LgrecoCompressor;  // profiles the residual where it lives

  struct Layer {
    std::string name;
    std::size_t numel = 0;
    bool quantized = false;
    bool error_feedback = false;  // quantized with a residual
    int bits = 0;
    Device device = Device::kCpu;
    int device_index = 0;
    std::vector<float> residual;  // a CPU layer's (a CUDA layer's is in device_)
  };
  const Layer& layer_at(std::size_t layer, const char* where) const;
  // Checks that `tensor` lives where the layer does.
  void check_device(const Layer& l, std::size_t layer, TensorView tensor, const char* call,
                    const char* role) const;

  QuantizeOptions options_;
  std::vector<Layer> layers_;
  std::vector<float> workspace_;  // one bucket of floats and bytes, reused by every call
  int world_size_ = 1;
  int rank_ = 0;
  std::int64_t step_ = 0;
  std::unique_ptr<detail::QuantizeDevice> device_;  // the CUDA layers (null without any)
  ExecutionContext execution_;
  mutable std::vector<std::vector<float>> host_residuals_;  // residual() of CUDA layers
};

}  // namespace gradcomm
