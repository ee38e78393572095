// Device memory and the few runtime calls the compressors make around their kernels, as
// plain C++ declarations (src/ includes this without nvcc; the definitions are in
// device_buffer.cu, built only with CUDA). Every call checks its status and throws
// gradcomm::Error (kCuda) naming what failed.
#pragma once

#include <cstddef>
#include <cstdint>

namespace gradcomm::kernels::cuda {

// Zeroed device memory on `device` (complete on return), and its release.
void* allocate_zeroed(std::size_t bytes, int device);
void free_device(void* ptr) noexcept;
// The calling thread's current device, and setting it (the restore never throws).
int current_device();
void set_current_device(int device);
void restore_current_device(int device) noexcept;

// Memory on one CUDA device, allocated once and freed at destruction (movable, not
// copyable). Allocation and freeing happen at setup and teardown, never per step.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(std::size_t bytes, int device);  // zeroed (synchronously)
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const noexcept { return data_; }
  template <typename T>
  T* as() const noexcept {
    return static_cast<T*>(data_);
  }
  std::size_t bytes() const noexcept { return bytes_; }
  int device() const noexcept { return device_; }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
  int device_ = 0;
};

// Makes `device` the calling thread's current device for a scope, then restores the
// previous one: kernels and copies go to the device the layer lives on, whatever device
// the caller had current.
class ScopedDevice {
 public:
  explicit ScopedDevice(int device);
  ~ScopedDevice();
  ScopedDevice(const ScopedDevice&) = delete;
  ScopedDevice& operator=(const ScopedDevice&) = delete;

 private:
  int previous_ = -1;
};

// Asynchronous on `stream` (a cudaStream_t; nullptr: the legacy default stream).
void zero_async(void* dst, std::size_t bytes, void* stream);
void fill_bytes_async(void* dst, int byte, std::size_t bytes, void* stream);
void copy_device_async(void* dst, const void* src, std::size_t bytes, void* stream);
// Ordered on `stream` and complete when they return (not for the hot path: state save
// and load, test accessors). Host memory may be pageable.
void copy_to_host_sync(void* dst, const void* src, std::size_t bytes, void* stream);
void copy_to_device_sync(void* dst, const void* src, std::size_t bytes, void* stream);
void synchronize(void* stream);
// The device a pointer was allocated on (throws for host memory).
int device_of(const void* ptr);

// For the exchange engine's device path: how many devices there are (0 where there is no
// driver), page-locked host memory (asynchronous copies to and from the host need it),
// copies in any direction and of strided rows on a stream, and events for ordering streams
// without the host waiting.
int device_count() noexcept;
void* pinned_alloc(std::size_t bytes);
void pinned_free(void* ptr) noexcept;
void copy_async(void* dst, const void* src, std::size_t bytes, void* stream);
// `rows` rows of `width` bytes from src (rows `src_pitch` apart) to dst (`dst_pitch` apart).
void copy_rows_async(void* dst, std::size_t dst_pitch, const void* src, std::size_t src_pitch,
                     std::size_t width, std::size_t rows, void* stream);
void* event_create();  // timing disabled: for ordering only
void event_destroy(void* event) noexcept;
void event_record(void* event, void* stream);
void stream_wait(void* stream, void* event);  // the stream waits; the host does not

}  // namespace gradcomm::kernels::cuda
