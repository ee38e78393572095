#include "compress/dense_device.h"

#include "compress/device_status.h"
#include "gradcomm/error.h"

#if defined(GRADCOMM_HAVE_CUDA)
#include <map>

#include "kernels/cuda/dense_kernels.cuh"
#include "kernels/cuda/device_buffer.cuh"
#endif

namespace gradcomm::detail {

#if defined(GRADCOMM_HAVE_CUDA)

namespace {

namespace cuda = kernels::cuda;

class CudaDenseDevice final : public DenseDevice {
 public:
  explicit CudaDenseDevice(std::span<const int> devices) {
    for (int device : devices) {
      if (!status_.contains(device)) status_.emplace(device, std::make_unique<DeviceStatus>(device));
    }
  }

  void set_execution(const ExecutionContext& context) override { execution_ = context; }

  std::size_t encode(std::size_t layer, int device, const float* grad, void* payload, bool half,
                     std::size_t n) override {
    cuda::ScopedDevice on(device);
    DeviceStatus& status = *status_.at(device);
    std::uint32_t* count = status.nonfinite_word(execution_, layer);
    if (half) {
      cuda::to_half_zeroing_nonfinite(grad, static_cast<std::uint16_t*>(payload), n, count, execution_.cuda_stream);
    } else {
      cuda::copy_zeroing_nonfinite(grad, static_cast<float*>(payload), n, count, execution_.cuda_stream);
    }
    return status.nonfinite_after(execution_);
  }

  void decode(int device, const void* received, bool half, float inv_ranks, float* out, std::size_t n) override {
    cuda::ScopedDevice on(device);
    if (half) {
      cuda::half_to_float_scaled(static_cast<const std::uint16_t*>(received), inv_ranks, out, n,
                                 execution_.cuda_stream);
    } else {
      cuda::scale(static_cast<const float*>(received), inv_ranks, out, n, execution_.cuda_stream);
    }
  }

 private:
  std::map<int, std::unique_ptr<DeviceStatus>> status_;
  ExecutionContext execution_;
};

}  // namespace

std::unique_ptr<DenseDevice> DenseDevice::create(std::span<const int> devices, int rank) {
  (void)rank;
  return std::make_unique<CudaDenseDevice>(devices);
}

#else

std::unique_ptr<DenseDevice> DenseDevice::create(std::span<const int>, int rank) {
  throw_without_cuda("DenseCompressor", rank);
}

#endif

}  // namespace gradcomm::detail
