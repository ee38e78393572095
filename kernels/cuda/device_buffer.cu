#include <cuda_runtime.h>

#include <utility>

#include "gradcomm/error.h"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/device_buffer.cuh"

namespace gradcomm::kernels::cuda {

void* allocate_zeroed(std::size_t bytes, int device) {
  if (bytes == 0) return nullptr;
  ScopedDevice on(device);
  void* data = nullptr;
  GRADCOMM_CUDA_OK(cudaMalloc(&data, bytes), "cudaMalloc of ", bytes, " bytes on device ", device);
  // On a stream of its own, waited for here: cudaMemset would run on the legacy stream,
  // which a non-blocking stream does not wait for, and a device-wide synchronisation
  // would wait for other ranks' streams sharing the device.
  cudaStream_t stream = nullptr;
  cudaError_t status = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  if (status == cudaSuccess) status = cudaMemsetAsync(data, 0, bytes, stream);
  if (status == cudaSuccess) status = cudaStreamSynchronize(stream);
  if (stream != nullptr) cudaStreamDestroy(stream);
  if (status != cudaSuccess) {
    cudaFree(data);
    GRADCOMM_CUDA_OK(status, "zeroing ", bytes, " new bytes on device ", device);
  }
  return data;
}

void free_device(void* ptr) noexcept {
  if (ptr != nullptr) cudaFree(ptr);
}

int current_device() {
  int device = 0;
  GRADCOMM_CUDA_OK(cudaGetDevice(&device), "cudaGetDevice");
  return device;
}

void set_current_device(int device) {
  GRADCOMM_CUDA_OK(cudaSetDevice(device), "cudaSetDevice(", device, ")");
}

void restore_current_device(int device) noexcept { cudaSetDevice(device); }

DeviceBuffer::DeviceBuffer(std::size_t bytes, int device)
    : data_(allocate_zeroed(bytes, device)), bytes_(bytes), device_(device) {}

DeviceBuffer::~DeviceBuffer() { free_device(data_); }

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)),
      device_(other.device_) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    DeviceBuffer old(std::move(*this));
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    device_ = other.device_;
  }
  return *this;
}

ScopedDevice::ScopedDevice(int device) {
  GRADCOMM_CUDA_OK(cudaGetDevice(&previous_), "cudaGetDevice");
  if (previous_ != device) GRADCOMM_CUDA_OK(cudaSetDevice(device), "cudaSetDevice(", device, ")");
}

ScopedDevice::~ScopedDevice() {
  int now = -1;
  if (cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
}

void zero_async(void* dst, std::size_t bytes, void* stream) { fill_bytes_async(dst, 0, bytes, stream); }

void fill_bytes_async(void* dst, int byte, std::size_t bytes, void* stream) {
  if (bytes == 0) return;
  GRADCOMM_CUDA_OK(cudaMemsetAsync(dst, byte, bytes, as_stream(stream)), "cudaMemsetAsync of ",
                   bytes, " bytes");
}

void copy_device_async(void* dst, const void* src, std::size_t bytes, void* stream) {
  if (bytes == 0) return;
  GRADCOMM_CUDA_OK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, as_stream(stream)),
                   "device copy of ", bytes, " bytes");
}

// A copy from or to pageable memory can return before its DMA is done; the stream
// synchronisation after it makes the data complete (or the buffer reusable) on return.
void copy_to_host_sync(void* dst, const void* src, std::size_t bytes, void* stream) {
  if (bytes == 0) return;
  GRADCOMM_CUDA_OK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, as_stream(stream)),
                   "copy of ", bytes, " bytes to the host");
  synchronize(stream);
}

void copy_to_device_sync(void* dst, const void* src, std::size_t bytes, void* stream) {
  if (bytes == 0) return;
  GRADCOMM_CUDA_OK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, as_stream(stream)),
                   "copy of ", bytes, " bytes to the device");
  synchronize(stream);
}

void synchronize(void* stream) {
  GRADCOMM_CUDA_OK(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize");
}

int device_of(const void* ptr) {
  cudaPointerAttributes attributes{};
  GRADCOMM_CUDA_OK(cudaPointerGetAttributes(&attributes, ptr), "cudaPointerGetAttributes");
  GRADCOMM_CHECK(attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged,
                 ErrorCode::kInvalidArgument, "expected CUDA device memory, got a host pointer");
  return attributes.device;
}

int device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return count;
}

void* pinned_alloc(std::size_t bytes) {
  void* ptr = nullptr;
  if (bytes > 0) GRADCOMM_CUDA_OK(cudaMallocHost(&ptr, bytes), "cudaMallocHost of ", bytes, " bytes");
  return ptr;
}

void pinned_free(void* ptr) noexcept {
  if (ptr != nullptr) cudaFreeHost(ptr);
}

void copy_async(void* dst, const void* src, std::size_t bytes, void* stream) {
  if (bytes == 0) return;
  GRADCOMM_CUDA_OK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, static_cast<cudaStream_t>(stream)),
                   "cudaMemcpyAsync of ", bytes, " bytes");
}

void copy_rows_async(void* dst, std::size_t dst_pitch, const void* src, std::size_t src_pitch,
                     std::size_t width, std::size_t rows, void* stream) {
  if (width == 0 || rows == 0) return;
  GRADCOMM_CUDA_OK(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, rows, cudaMemcpyDefault,
                                     static_cast<cudaStream_t>(stream)),
                   "cudaMemcpy2DAsync of ", rows, " rows of ", width, " bytes");
}

void* event_create() {
  cudaEvent_t event = nullptr;
  GRADCOMM_CUDA_OK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreateWithFlags");
  return event;
}

void event_destroy(void* event) noexcept {
  if (event != nullptr) cudaEventDestroy(static_cast<cudaEvent_t>(event));
}

void event_record(void* event, void* stream) {
  GRADCOMM_CUDA_OK(cudaEventRecord(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(stream)),
                   "cudaEventRecord");
}

void stream_wait(void* stream, void* event) {
  GRADCOMM_CUDA_OK(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), static_cast<cudaEvent_t>(event), 0),
                   "cudaStreamWaitEvent");
}

}  // namespace gradcomm::kernels::cuda
