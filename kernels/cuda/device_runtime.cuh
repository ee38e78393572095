// The few CUDA runtime calls the exchange engine needs, as host-callable C++ (no CUDA
// headers here, so code built without nvcc includes it): device memory, pinned host
// memory, asynchronous copies and fills on a stream, events, and the current device.
// Every failure throws gradcomm::Error (kCuda) naming the call and CUDA's message.
#pragma once

#include <cstddef>
#include <cstdint>

namespace gradcomm::kernels::cuda {

// Makes `device` current for the scope and restores the previous one after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

int device_count() noexcept;  // 0 where there is no driver or device

void* device_alloc(std::size_t bytes);
void device_free(void* ptr) noexcept;
void* pinned_alloc(std::size_t bytes);  // page-locked host memory (async copies need it)
void pinned_free(void* ptr) noexcept;

void fill_zero_async(void* ptr, std::size_t bytes, void* stream);
void copy_async(void* dst, const void* src, std::size_t bytes, void* stream);  // any direction
// `rows` rows of `width` bytes from src (rows `src_pitch` apart) to dst (`dst_pitch` apart).
void copy_rows_async(void* dst, std::size_t dst_pitch, const void* src, std::size_t src_pitch,
                     std::size_t width, std::size_t rows, void* stream);
void synchronize(void* stream);

void* event_create();  // timing disabled: for ordering only
void event_destroy(void* event) noexcept;
void event_record(void* event, void* stream);
void stream_wait(void* stream, void* event);  // the stream waits; the host does not

}  // namespace gradcomm::kernels::cuda
