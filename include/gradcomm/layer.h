// LayerSpec: what the exchange needs to know about one gradient tensor.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "gradcomm/tensor.h"

namespace gradcomm {

struct LayerSpec {
  std::string name;        // used in error messages and the agreement fingerprint
  std::size_t numel = 0;   // elements of the flattened gradient
  int ndim = 1;            // the tensor's rank: 1-D tensors (biases, norms) stay dense
  bool force_dense = false;  // never compress this layer, whatever its shape
  // The gradient's element type (float32, float16 or bfloat16). Compressors see float32
  // whatever it is: the StepEngine converts 16-bit gradients and updates at its edges, so
  // momenta and residuals stay float32.
  DType dtype = DType::kFloat32;
  // Where the gradient lives: a compressor keeps its state for the layer there and runs
  // its kernels there (on the stream of ExecutionContext for CUDA).
  Device device = Device::kCpu;
  int device_index = 0;
};

// The element types gradcomm exchanges and updates: float32, float16 and bfloat16.
inline bool is_gradient_dtype(DType dtype) {
  return dtype == DType::kFloat32 || dtype == DType::kFloat16 || dtype == DType::kBFloat16;
}

// A layer the compressor leaves dense: marked so, or 1-D (as in the DGC reference).
inline bool is_dense_by_default(const LayerSpec& layer) {
  return layer.force_dense || layer.ndim <= 1;
}

}  // namespace gradcomm
