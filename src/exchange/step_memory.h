// Where a StepEngine's buffers live and how the engine moves bytes in them: host memory
// (plain pointers and memcpy) or one CUDA device (allocations made once, copies and the
// engine's framing kernels enqueued on the step's stream, nothing waited for until the
// one synchronisation of finish_step). The CPU build has only the host side.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "gradcomm/tensor.h"

namespace gradcomm::detail {

// One buffer of the engine, sized once at setup.
class StepBuffer {
 public:
  StepBuffer() = default;
  // Zeroed; on a CUDA device, allocated on `device_index` (once, at setup).
  StepBuffer(Device device, int device_index, std::size_t bytes);
  ~StepBuffer();
  StepBuffer(StepBuffer&& other) noexcept;
  StepBuffer& operator=(StepBuffer&& other) noexcept;
  StepBuffer(const StepBuffer&) = delete;
  StepBuffer& operator=(const StepBuffer&) = delete;

  std::byte* at(std::size_t offset) const { return data_ + offset; }
  std::size_t size() const noexcept { return size_; }
  // At least `bytes` (zeroed when it grows; the old contents are dropped): buffers sized to
  // what steps use, so a step no larger than an earlier one allocates nothing.
  void grow(std::size_t bytes);

 private:
  void release() noexcept;
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  Device device_ = Device::kCpu;
  int device_index_ = 0;
  std::vector<std::byte> host_;  // the CPU buffer's storage
};

// Page-locked host memory for the device's status words (plain host memory on the CPU).
class HostStaging {
 public:
  HostStaging() = default;
  HostStaging(Device device, std::size_t bytes);
  ~HostStaging();
  HostStaging(const HostStaging&) = delete;
  HostStaging& operator=(const HostStaging&) = delete;
  HostStaging(HostStaging&& other) noexcept;
  HostStaging& operator=(HostStaging&& other) noexcept;

  std::byte* at(std::size_t offset) const { return data_ + offset; }

 private:
  void release() noexcept;
  std::byte* data_ = nullptr;
  Device device_ = Device::kCpu;
  std::vector<std::byte> host_;
};

// Makes the layers' CUDA device current for a scope (kernels and copies go to the device
// their stream belongs to, whatever device the caller had current); nothing on the CPU.
class DeviceScope {
 public:
  DeviceScope(Device device, int device_index);
  ~DeviceScope();
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = -1;
};

// The byte moves of a step, on the host or enqueued on `stream` for a device.
struct StepMover {
  Device device = Device::kCpu;
  void* stream = nullptr;

  void copy(void* dst, const void* src, std::size_t bytes) const;
  void copy_rows(void* dst, std::size_t dst_pitch, const void* src, std::size_t src_pitch,
                 std::size_t width, std::size_t rows) const;
  void zero(void* dst, std::size_t bytes) const;
  void fill_ones(void* dst, std::size_t bytes) const;  // every byte 0xff
  void widen(const void* in, DType dtype, float* out, std::size_t n) const;
  void narrow(const float* in, DType dtype, void* out, std::size_t n) const;
  // Device only: waits for everything enqueued on the stream (the step's one sync).
  void synchronize() const;
};

}  // namespace gradcomm::detail
