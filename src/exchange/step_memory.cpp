#include "exchange/step_memory.h"

#include <cstring>
#include <utility>

#include "kernels/cpu/convert_kernels.h"
#if defined(GRADCOMM_HAVE_CUDA)
#include "kernels/cuda/device_buffer.cuh"
#include "kernels/cuda/engine_kernels.cuh"
#endif

namespace gradcomm::detail {
namespace {

[[maybe_unused]] [[noreturn]] void no_cuda(const char* what) {
  GRADCOMM_THROW(ErrorCode::kUnsupported, what,
                 ": layers on a CUDA device need gradcomm built with CUDA (GRADCOMM_WITH_CUDA=ON)");
}

}  // namespace

StepBuffer::StepBuffer(Device device, int device_index, std::size_t bytes)
    : size_(bytes), device_(device), device_index_(device_index) {
  if (device == Device::kCpu) {
    host_.resize(bytes);
    data_ = host_.data();
    return;
  }
#if defined(GRADCOMM_HAVE_CUDA)
  data_ = static_cast<std::byte*>(kernels::cuda::allocate_zeroed(bytes, device_index));
#else
  no_cuda("StepEngine buffers");
#endif
}

StepBuffer::~StepBuffer() { release(); }

void StepBuffer::grow(std::size_t bytes) {
  if (bytes <= size_) return;
  *this = StepBuffer(device_, device_index_, bytes);
}

void StepBuffer::release() noexcept {
#if defined(GRADCOMM_HAVE_CUDA)
  if (device_ == Device::kCuda) kernels::cuda::free_device(data_);
#endif
  data_ = nullptr;
  size_ = 0;
  host_.clear();
}

StepBuffer::StepBuffer(StepBuffer&& other) noexcept { *this = std::move(other); }

StepBuffer& StepBuffer::operator=(StepBuffer&& other) noexcept {
  if (this != &other) {
    release();
    device_ = other.device_;
    device_index_ = other.device_index_;
    size_ = std::exchange(other.size_, 0);
    host_ = std::move(other.host_);
    data_ = device_ == Device::kCpu ? host_.data() : other.data_;
    other.data_ = nullptr;
  }
  return *this;
}

HostStaging::HostStaging(Device device, std::size_t bytes) : device_(device) {
  if (device == Device::kCpu) {
    host_.resize(bytes);
    data_ = host_.data();
    return;
  }
#if defined(GRADCOMM_HAVE_CUDA)
  data_ = static_cast<std::byte*>(kernels::cuda::pinned_alloc(bytes));
#else
  no_cuda("StepEngine status staging");
#endif
}

HostStaging::~HostStaging() { release(); }

void HostStaging::release() noexcept {
#if defined(GRADCOMM_HAVE_CUDA)
  if (device_ == Device::kCuda) kernels::cuda::pinned_free(data_);
#endif
  data_ = nullptr;
  host_.clear();
}

HostStaging::HostStaging(HostStaging&& other) noexcept { *this = std::move(other); }

HostStaging& HostStaging::operator=(HostStaging&& other) noexcept {
  if (this != &other) {
    release();
    device_ = other.device_;
    host_ = std::move(other.host_);
    data_ = device_ == Device::kCpu ? host_.data() : other.data_;
    other.data_ = nullptr;
  }
  return *this;
}

DeviceScope::DeviceScope(Device device, int device_index) {
  if (device == Device::kCpu) return;
#if defined(GRADCOMM_HAVE_CUDA)
  previous_ = kernels::cuda::current_device();
  if (previous_ != device_index) kernels::cuda::set_current_device(device_index);
#else
  (void)device_index;
  no_cuda("StepEngine");
#endif
}

DeviceScope::~DeviceScope() {
#if defined(GRADCOMM_HAVE_CUDA)
  if (previous_ >= 0) kernels::cuda::restore_current_device(previous_);
#endif
}

void StepMover::copy(void* dst, const void* src, std::size_t bytes) const {
  if (bytes == 0) return;
  if (device == Device::kCpu) {
    std::memcpy(dst, src, bytes);
    return;
  }
#if defined(GRADCOMM_HAVE_CUDA)
  kernels::cuda::copy_async(dst, src, bytes, stream);
#else
  no_cuda("StepEngine");
#endif
}

void StepMover::copy_rows(void* dst, std::size_t dst_pitch, const void* src, std::size_t src_pitch,
                          std::size_t width, std::size_t rows) const {
  if (device == Device::kCpu) {
    for (std::size_t r = 0; r < rows; ++r) {
      if (width) {
        std::memcpy(static_cast<std::byte*>(dst) + r * dst_pitch,
                    static_cast<const std::byte*>(src) + r * src_pitch, width);
      }
    }
    return;
  }
#if defined(GRADCOMM_HAVE_CUDA)
  kernels::cuda::copy_rows_async(dst, dst_pitch, src, src_pitch, width, rows, stream);
#else
  no_cuda("StepEngine");
#endif
}

void StepMover::zero(void* dst, std::size_t bytes) const {
  if (bytes == 0) return;
  if (device == Device::kCpu) {
    std::memset(dst, 0, bytes);
    return;
  }
#if defined(GRADCOMM_HAVE_CUDA)
  kernels::cuda::zero_async(dst, bytes, stream);
#else
  no_cuda("StepEngine");
#endif
}

void StepMover::fill_ones(void* dst, std::size_t bytes) const {
  if (bytes == 0) return;
  if (device == Device::kCpu) {
    std::memset(dst, 0xff, bytes);
    return;
  }
#if defined(GRADCOMM_HAVE_CUDA)
  kernels::cuda::fill_bytes_async(dst, 0xff, bytes, stream);
#else
  no_cuda("StepEngine");
#endif
}

void StepMover::widen(const void* in, DType dtype, float* out, std::size_t n) const {
  if (device == Device::kCpu) {
    kernels::widen_to_f32(static_cast<const std::uint16_t*>(in), dtype, out, n);
    return;
  }
#if defined(GRADCOMM_HAVE_CUDA)
  kernels::cuda::widen_to_f32(static_cast<const std::uint16_t*>(in), dtype == DType::kBFloat16, out, n,
                              stream);
#else
  no_cuda("StepEngine");
#endif
}

void StepMover::narrow(const float* in, DType dtype, void* out, std::size_t n) const {
  if (device == Device::kCpu) {
    kernels::narrow_from_f32(in, dtype, static_cast<std::uint16_t*>(out), n);
    return;
  }
#if defined(GRADCOMM_HAVE_CUDA)
  kernels::cuda::narrow_from_f32(in, dtype == DType::kBFloat16, static_cast<std::uint16_t*>(out), n,
                                 stream);
#else
  no_cuda("StepEngine");
#endif
}

void StepMover::synchronize() const {
  if (device == Device::kCpu) return;
#if defined(GRADCOMM_HAVE_CUDA)
  kernels::cuda::synchronize(stream);
#else
  no_cuda("StepEngine");
#endif
}

}  // namespace gradcomm::detail
