// QuantizeCompressor's CUDA layers: their residuals on their device and the calls into
// kernels/cuda/quantize_kernels.cuh and dense_kernels.cuh. Every kernel of encode, decode
// and on_step_skipped is enqueued on the ExecutionContext's stream; nothing here
// allocates or waits for the device in a step, except the fallbacks of
// compress/device_status.h for a caller without the StepEngine's device words. State
// copies (save, load, the read-only view) wait; they are not on the hot path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "gradcomm/compressor.h"
#include "kernels/cpu/quantize_kernels.h"

namespace gradcomm::detail {

class QuantizeDevice {
 public:
  struct LayerShape {
    std::size_t layer = 0;  // index among the compressor's layers
    std::size_t numel = 0;
    int device = 0;
    bool residual = false;  // quantized with error feedback
  };
  // Throws kUnsupported when gradcomm was built without CUDA.
  static std::unique_ptr<QuantizeDevice> create(std::span<const LayerShape> layers, std::size_t num_layers,
                                                int rank);
  virtual ~QuantizeDevice() = default;

  virtual void set_execution(const ExecutionContext& context) = 0;

  // Each returns the non-finite elements when the context has no device word for them.
  virtual std::size_t encode(std::size_t layer, const float* grad, const kernels::QuantizeParams& params,
                             std::uint8_t* payload) = 0;
  virtual std::size_t encode_dense(std::size_t layer, const float* grad, float* payload) = 0;

  struct Corrupt {
    std::uint32_t rank = 0xffffffffu;    // none, or the lowest bad rank
    std::uint32_t fault = 0xffffffffu;   // quant::payload_fault_code of its first fault
  };
  // A bad payload leaves out 0; reported here only without the context's corrupt array.
  virtual Corrupt decode(std::size_t layer, const std::uint8_t* received, std::size_t stride, int ranks, int bits,
                         std::size_t bucket, float inv_ranks, float* out) = 0;
  virtual void decode_dense(std::size_t layer, const float* received, float inv_ranks, float* out) = 0;
  // residual += what the own payload sent.
  virtual void restore(std::size_t layer, const std::uint8_t* own_payload, int bits, std::size_t bucket) = 0;

  virtual float* residual(std::size_t layer) const = 0;
  virtual int device_of(std::size_t layer) const = 0;
  virtual void copy_out(std::size_t layer, std::vector<float>& residual) const = 0;
  virtual void copy_in(std::size_t layer, const void* residual, std::size_t bytes) = 0;
};

}  // namespace gradcomm::detail
