#include "lgreco/lgreco_device.h"

#include "compress/device_status.h"
#include "gradcomm/error.h"

#if defined(GRADCOMM_HAVE_CUDA)
#include <algorithm>
#include <map>

#include "kernels/cuda/device_buffer.cuh"
#include "kernels/cuda/lgreco_kernels.cuh"
#include "kernels/shared/lgreco_math.h"
#endif

namespace gradcomm::detail {

#if defined(GRADCOMM_HAVE_CUDA)

namespace {

namespace cuda = kernels::cuda;

class CudaLgrecoDevice final : public LgrecoDevice {
 public:
  CudaLgrecoDevice(std::span<const LayerShape> shapes, std::size_t num_layers, const Settings& settings)
      : settings_(settings), layers_(num_layers) {
    GRADCOMM_CHECK_ARG(settings.bit_widths.size() <= 8, "LgrecoCompressor: ", settings.bit_widths.size(),
                       " bit widths (at most 8 distinct ones exist)");
    widths_.count = static_cast<int>(settings.bit_widths.size());
    std::copy(settings.bit_widths.begin(), settings.bit_widths.end(), widths_.bits);
    std::map<int, std::size_t> largest;
    for (const LayerShape& shape : shapes) {
      layers_.at(shape.layer) = {true, shape.numel, shape.device};
      largest[shape.device] = std::max(largest[shape.device], shape.numel);
    }
    for (const auto& [device, numel] : largest) {
      Device& d = devices_[device];
      d.workspace = std::make_unique<cuda::LgrecoWorkspace>(
          numel, settings.bucket, settings.candidates, std::min(numel, settings.dgc_sample), device);
      d.table = cuda::DeviceBuffer(num_layers * settings.candidates * sizeof(double), device);
      cuda::ScopedDevice on(device);
      cuda::lgreco_set_densities(*d.workspace, settings.densities.data(), settings.densities.size(), nullptr);
    }
  }

  void set_execution(const ExecutionContext& context) override { execution_ = context; }

  void profile_quant(std::size_t layer, const float* grad, const float* residual) override {
    const Layer& l = at(layer);
    cuda::ScopedDevice on(l.device);
    Device& d = devices_.at(l.device);
    cuda::lgreco_quant_errors(grad, residual, l.numel, settings_.bucket, widths_, settings_.stochastic,
                              row(d, layer), *d.workspace, execution_.cuda_stream);
  }

  void profile_dgc(std::size_t layer, const float* grad, const float* scale, const float* u, const float* v,
                   float momentum, bool nesterov) override {
    const Layer& l = at(layer);
    cuda::ScopedDevice on(l.device);
    Device& d = devices_.at(l.device);
    // As the CPU's lgreco_topk_errors: every element when the layer is small.
    const std::size_t samples = std::min(l.numel, settings_.dgc_sample);
    const double largest = *std::max_element(settings_.densities.begin(), settings_.densities.end());
    cuda::lgreco_dgc_errors(grad, scale, u, v, l.numel, momentum, nesterov, samples,
                            kernels::lgreco::sample_top(samples, largest), settings_.densities.size(),
                            row(d, layer), *d.workspace, execution_.cuda_stream);
  }

  void fetch_rows(std::span<const std::size_t> rows, LgrecoTable& table) override {
    for (std::size_t layer : rows) {
      const Layer& l = at(layer);
      cuda::ScopedDevice on(l.device);
      cuda::copy_to_host_sync(&table.error_at(layer, 0), row(devices_.at(l.device), layer),
                              settings_.candidates * sizeof(double), execution_.cuda_stream);
    }
  }

 private:
  struct Layer {
    bool present = false;
    std::size_t numel = 0;
    int device = 0;
  };
  struct Device {
    std::unique_ptr<cuda::LgrecoWorkspace> workspace;
    cuda::DeviceBuffer table;  // [layer][candidate], doubles
  };

  const Layer& at(std::size_t layer) const {
    GRADCOMM_CHECK(layer < layers_.size() && layers_[layer].present, ErrorCode::kInternal, "LgrecoCompressor: layer ",
                   layer, " is not a planned CUDA layer");
    return layers_[layer];
  }
  double* row(Device& d, std::size_t layer) const { return d.table.as<double>() + layer * settings_.candidates; }

  Settings settings_;
  cuda::BitWidths widths_;
  std::vector<Layer> layers_;
  std::map<int, Device> devices_;
  ExecutionContext execution_;
};

}  // namespace

std::unique_ptr<LgrecoDevice> LgrecoDevice::create(std::span<const LayerShape> layers, std::size_t num_layers,
                                                   const Settings& settings, int rank) {
  (void)rank;
  return std::make_unique<CudaLgrecoDevice>(layers, num_layers, settings);
}

#else

std::unique_ptr<LgrecoDevice> LgrecoDevice::create(std::span<const LayerShape>, std::size_t,
                                                   const Settings&, int rank) {
  throw_without_cuda("LgrecoCompressor", rank);
}

#endif

}  // namespace gradcomm::detail
