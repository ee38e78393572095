// DenseCompressor's CUDA layers: the copy to the wire dtype and the averaging, as kernels
// (kernels/cuda/dense_kernels.cuh) on the ExecutionContext's stream; no allocation and
// no wait for the device in a step, except the non-finite fallback of
// compress/device_status.h for a caller without the StepEngine's device words.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "gradcomm/compressor.h"

namespace gradcomm::detail {

class DenseDevice {
 public:
  // The devices the CUDA layers live on. Throws kUnsupported without CUDA.
  static std::unique_ptr<DenseDevice> create(std::span<const int> devices, int rank);
  virtual ~DenseDevice() = default;

  virtual void set_execution(const ExecutionContext& context) = 0;
  // Returns the non-finite elements when the context has no device word for them.
  virtual std::size_t encode(std::size_t layer, int device, const float* grad, void* payload, bool half,
                             std::size_t n) = 0;
  virtual void decode(int device, const void* received, bool half, float inv_ranks, float* out,
                      std::size_t n) = 0;
};

}  // namespace gradcomm::detail
