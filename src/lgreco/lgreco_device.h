// LgrecoCompressor's profiling of CUDA layers: the error table's rows computed on the
// layer's device (kernels/cuda/lgreco_kernels.cuh) on the ExecutionContext's stream,
// kept there until the planner asks for the table (fetch_rows waits for the device, once
// per profiling step, after the step).
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <vector>

#include "gradcomm/compressor.h"
#include "gradcomm/lgreco.h"

namespace gradcomm::detail {

class LgrecoDevice {
 public:
  struct LayerShape {
    std::size_t layer = 0;
    std::size_t numel = 0;
    int device = 0;
  };
  struct Settings {
    std::size_t candidates = 0;
    std::size_t bucket = 0;            // quantization family
    std::vector<int> bit_widths;       // quantization family
    bool stochastic = false;
    std::vector<double> densities;     // DGC family
    std::size_t dgc_sample = 0;        // DGC family: the most samples of a layer
  };
  // The planned CUDA layers. Throws kUnsupported without CUDA.
  static std::unique_ptr<LgrecoDevice> create(std::span<const LayerShape> layers, std::size_t num_layers,
                                              const Settings& settings, int rank);
  virtual ~LgrecoDevice() = default;

  virtual void set_execution(const ExecutionContext& context) = 0;
  // Row `layer` of the table: quantization of finite(grad) + residual (null: none).
  virtual void profile_quant(std::size_t layer, const float* grad, const float* residual) = 0;
  // Row `layer`: the DGC family's estimate on u, v and grad * *scale (null: 1).
  virtual void profile_dgc(std::size_t layer, const float* grad, const float* scale, const float* u,
                           const float* v, float momentum, bool nesterov) = 0;
  // Copies rows `layers` into `table` (waits for the device).
  virtual void fetch_rows(std::span<const std::size_t> layers, LgrecoTable& table) = 0;
};

}  // namespace gradcomm::detail
