// TensorView: a non-owning view of a contiguous buffer on the CPU or a CUDA device.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "gradcomm/error.h"

namespace gradcomm {

enum class DType : std::uint8_t { kFloat32, kFloat16, kBFloat16, kInt32, kUInt32, kUInt8 };
enum class Device : std::uint8_t { kCpu, kCuda };

std::size_t dtype_size(DType dtype) noexcept;
const char* dtype_name(DType dtype) noexcept;
const char* device_name(Device device) noexcept;

template <typename T>
constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::kFloat32; }
template <> constexpr DType dtype_of<std::int32_t>() { return DType::kInt32; }
template <> constexpr DType dtype_of<std::uint32_t>() { return DType::kUInt32; }
template <> constexpr DType dtype_of<std::uint8_t>() { return DType::kUInt8; }

class TensorView {
 public:
  TensorView() = default;
  TensorView(void* data, std::size_t numel, DType dtype, Device device = Device::kCpu,
             int device_index = 0)
      : data_(data), numel_(numel), dtype_(dtype), device_(device), device_index_(device_index) {}

  template <typename T>
  static TensorView of(std::span<T> values) {
    return TensorView(const_cast<std::remove_const_t<T>*>(values.data()), values.size(),
                      dtype_of<std::remove_const_t<T>>());
  }

  void* data() const noexcept { return data_; }
  std::size_t numel() const noexcept { return numel_; }
  std::size_t nbytes() const noexcept { return numel_ * dtype_size(dtype_); }
  DType dtype() const noexcept { return dtype_; }
  Device device() const noexcept { return device_; }
  int device_index() const noexcept { return device_index_; }
  bool empty() const noexcept { return numel_ == 0; }

  // A typed span after checking the dtype (and that the data is host memory).
  template <typename T>
  std::span<T> span(const char* what = "tensor") const {
    GRADCOMM_CHECK(dtype_ == dtype_of<std::remove_const_t<T>>(), ErrorCode::kInvalidArgument,
                   what, ": expected dtype ", dtype_name(dtype_of<std::remove_const_t<T>>()),
                   ", got ", dtype_name(dtype_));
    GRADCOMM_CHECK(device_ == Device::kCpu, ErrorCode::kInvalidArgument, what,
                   ": expected a CPU tensor, got ", device_name(device_));
    return {static_cast<T*>(data_), numel_};
  }

  // Elements [offset, offset + count) of this view.
  TensorView slice(std::size_t offset, std::size_t count) const;

  std::string describe() const;  // "float32[1000] on cpu"

 private:
  void* data_ = nullptr;
  std::size_t numel_ = 0;
  DType dtype_ = DType::kFloat32;
  Device device_ = Device::kCpu;
  int device_index_ = 0;
};

}  // namespace gradcomm
