// DgcCompressor's CUDA layers (dgc_device.h): device memory and kernel calls only; every
// decision (density, k, exact or sampled, flush or not, the sample offset) is made by the
// compressor on the host, the same for both devices.

#include "compress/dgc/dgc_device.h"

#include "compress/device_status.h"
#include "gradcomm/error.h"

#if defined(GRADCOMM_HAVE_CUDA)
#include <algorithm>
#include <map>

#include "kernels/cuda/device_buffer.cuh"
#include "kernels/cuda/dgc_kernels.cuh"
#endif

namespace gradcomm::detail {

#if defined(GRADCOMM_HAVE_CUDA)

namespace {

namespace cuda = kernels::cuda;
using kernels::dgc::SearchStats;
using kernels::dgc::ThresholdMemory;

// Per layer: the small things the kernels keep across steps, in one allocation.
struct LayerWords {
  ThresholdMemory memory;
  SearchStats stats;
};

class CudaDgcDevice final : public DgcDevice {
 public:
  CudaDgcDevice(std::span<const LayerShape> shapes, std::size_t num_layers, std::size_t sample_stride)
      : layers_(num_layers) {
    std::map<int, std::pair<std::size_t, std::size_t>> largest;  // device -> numel, slots
    for (const LayerShape& shape : shapes) {
      Layer& l = layers_.at(shape.layer);
      l.present = true;
      l.numel = shape.numel;
      l.device = shape.device;
      l.u = cuda::DeviceBuffer(shape.numel * sizeof(float), shape.device);
      auto& [numel, slots] = largest[shape.device];  // every device gets a workspace (clipping)
      if (shape.sparse) {
        l.v = cuda::DeviceBuffer(shape.numel * sizeof(float), shape.device);
        numel = std::max(numel, shape.numel);
        slots = std::max(slots, shape.max_slots);
      }
      l.words = cuda::DeviceBuffer(sizeof(LayerWords), shape.device);
      if (!devices_.contains(shape.device)) devices_[shape.device].status = std::make_unique<DeviceStatus>(shape.device);
    }
    for (const auto& [device, size] : largest) {
      devices_[device].workspace =
          std::make_unique<cuda::DgcWorkspace>(size.first, size.second, sample_stride, device);
    }
  }

  void set_execution(const ExecutionContext& context) override { execution_ = context; }

  std::size_t encode_dense(std::size_t layer, const float* grad, double clip_limit, bool half,
                           void* payload) override {
    const Layer& l = at(layer);
    cuda::ScopedDevice on(l.device);
    DeviceStatus& status = status_of(l);
    cuda::dgc_dense_payload(grad, l.numel, clip(l, grad, clip_limit), half, payload,
                            status.nonfinite_word(execution_, layer), stream());
    return status.nonfinite_after(execution_);
  }

  std::size_t encode_flush(std::size_t layer, const float* grad, double clip_limit, float momentum,
                           bool nesterov, bool half, void* payload) override {
    const Layer& l = at(layer);
    cuda::ScopedDevice on(l.device);
    DeviceStatus& status = status_of(l);
    cuda::dgc_flush(grad, l.u.as<float>(), l.v.as<float>(), l.numel, momentum, nesterov,
                    clip(l, grad, clip_limit), half, payload, status.nonfinite_word(execution_, layer), stream());
    return status.nonfinite_after(execution_);
  }

  std::size_t encode_sparse(std::size_t layer, kernels::dgc::SparseEncodeArgs args,
                            double clip_limit) override {
    const Layer& l = at(layer);
    cuda::ScopedDevice on(l.device);
    DeviceStatus& status = status_of(l);
    args.u = l.u.as<float>();
    args.v = l.v.as<float>();
    args.memory = &l.words.as<LayerWords>()->memory;
    args.stats = &l.words.as<LayerWords>()->stats;
    args.grad_scale_at = clip(l, args.grad, clip_limit);
    cuda::dgc_encode_sparse(args, *devices_.at(l.device).workspace, status.nonfinite_word(execution_, layer),
                            stream());
    return status.nonfinite_after(execution_);
  }

  void decode_dense(std::size_t layer, const void* received, bool half, float inv_ranks, float* out,
                    bool momentum_after, float momentum, bool nesterov) override {
    const Layer& l = at(layer);
    cuda::ScopedDevice on(l.device);
    cuda::dgc_dense_decode(received, half, l.numel, inv_ranks, out, momentum_after, l.u.as<float>(),
                           momentum, nesterov, stream());
  }

  std::uint32_t decode_sparse(std::size_t layer, const std::uint8_t* received, int ranks,
                              std::size_t block_bytes, std::size_t k, bool half, float inv_ranks,
                              float* out) override {
    const Layer& l = at(layer);
    cuda::ScopedDevice on(l.device);
    DeviceStatus& status = status_of(l);
    cuda::dgc_sparse_decode(received, ranks, block_bytes, k, half, l.numel, inv_ranks, out,
                            status.corrupt_word(execution_, layer), stream());
    return status.corrupt_after(execution_);
  }

  void restore_flush(std::size_t layer, const void* own_payload, bool half) override {
    const Layer& l = at(layer);
    cuda::ScopedDevice on(l.device);
    cuda::dgc_restore_flush(own_payload, half, l.numel, l.v.as<float>(), stream());
  }

  void restore_selected(std::size_t layer, const std::uint8_t* own_payload, std::size_t k,
                        bool half) override {
    const Layer& l = at(layer);
    cuda::ScopedDevice on(l.device);
    cuda::dgc_restore_selected(own_payload, k, half, l.numel, l.v.as<float>(), stream());
  }

  float* momentum(std::size_t layer) const override { return at(layer).u.as<float>(); }
  float* residual(std::size_t layer) const override { return at(layer).v.as<float>(); }
  int device_of(std::size_t layer) const override { return at(layer).device; }

  void copy_out(std::size_t layer, std::vector<float>& u, std::vector<float>& v,
                ThresholdMemory& memory) const override {
    const Layer& l = at(layer);
    cuda::ScopedDevice on(l.device);
    u.resize(l.numel);
    v.resize(l.v.data() ? l.numel : 0);
    cuda::copy_to_host_sync(u.data(), l.u.data(), u.size() * sizeof(float), stream());
    cuda::copy_to_host_sync(v.data(), l.v.data(), v.size() * sizeof(float), stream());
    cuda::copy_to_host_sync(&memory, &l.words.as<LayerWords>()->memory, sizeof memory, stream());
  }

  void copy_in(std::size_t layer, const std::vector<float>& u, const std::vector<float>& v,
               const ThresholdMemory& memory) override {
    const Layer& l = at(layer);
    GRADCOMM_CHECK(u.size() == l.numel && v.size() == (l.v.data() ? l.numel : 0), ErrorCode::kInternal,
                   "DgcCompressor: loading ", u.size(), " and ", v.size(), " floats into a CUDA layer of ",
                   l.numel);
    cuda::ScopedDevice on(l.device);
    cuda::copy_to_device_sync(l.u.data(), u.data(), u.size() * sizeof(float), stream());
    cuda::copy_to_device_sync(l.v.data(), v.data(), v.size() * sizeof(float), stream());
    cuda::copy_to_device_sync(&l.words.as<LayerWords>()->memory, &memory, sizeof memory, stream());
  }

  SearchStats last_stats(std::size_t layer) const override {
    const Layer& l = at(layer);
    cuda::ScopedDevice on(l.device);
    SearchStats stats;
    cuda::copy_to_host_sync(&stats, &l.words.as<LayerWords>()->stats, sizeof stats, stream());
    return stats;
  }

  const float* clip_factor(std::size_t layer, const float* grad, double clip_limit) override {
    const Layer& l = at(layer);
    cuda::ScopedDevice on(l.device);
    return clip(l, grad, clip_limit);
  }

 private:
  struct Layer {
    bool present = false;
    std::size_t numel = 0;
    int device = 0;
    cuda::DeviceBuffer u, v, words;
  };
  struct Device {
    std::unique_ptr<cuda::DgcWorkspace> workspace;
    std::unique_ptr<DeviceStatus> status;
  };

  const Layer& at(std::size_t layer) const {
    GRADCOMM_CHECK(layer < layers_.size() && layers_[layer].present, ErrorCode::kInternal,
                   "DgcCompressor: layer ", layer, " is not a CUDA layer");
    return layers_[layer];
  }
  void* stream() const { return execution_.cuda_stream; }
  DeviceStatus& status_of(const Layer& l) { return *devices_.at(l.device).status; }

  const float* clip(const Layer& l, const float* grad, double clip_limit) {
    if (clip_limit <= 0.0) return nullptr;
    cuda::DgcWorkspace& w = *devices_.at(l.device).workspace;
    cuda::dgc_clip_scale(grad, l.numel, clip_limit, w, stream());
    return w.clip_scale();
  }

  std::vector<Layer> layers_;
  std::map<int, Device> devices_;
  ExecutionContext execution_;
};

}  // namespace

std::unique_ptr<DgcDevice> DgcDevice::create(std::span<const LayerShape> layers, std::size_t num_layers,
                                             std::size_t sample_stride, int rank) {
  (void)rank;
  return std::make_unique<CudaDgcDevice>(layers, num_layers, sample_stride);
}

#else

std::unique_ptr<DgcDevice> DgcDevice::create(std::span<const LayerShape>, std::size_t, std::size_t,
                                             int rank) {
  throw_without_cuda("DgcCompressor", rank);
}

#endif

}  // namespace gradcomm::detail
