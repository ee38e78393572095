#include "gradcomm/tensor.h"

#include <string>

namespace gradcomm {

std::size_t dtype_size(DType dtype) noexcept {
  switch (dtype) {
    case DType::kFloat32: case DType::kInt32: case DType::kUInt32: return 4;
    case DType::kFloat16: case DType::kBFloat16: return 2;
    case DType::kUInt8: return 1;
  }
  return 0;
}

const char* dtype_name(DType dtype) noexcept {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kInt32: return "int32";
    case DType::kUInt32: return "uint32";
    case DType::kUInt8: return "uint8";
  }
  return "unknown";
}

const char* device_name(Device device) noexcept {
  return device == Device::kCpu ? "cpu" : "cuda";
}

TensorView TensorView::slice(std::size_t offset, std::size_t count) const {
  GRADCOMM_CHECK(offset <= numel_ && count <= numel_ - offset, ErrorCode::kSizeMismatch,
                 "slice [", offset, ", ", offset + count, ") out of range of ", describe());
  return TensorView(static_cast<char*>(data_) + offset * dtype_size(dtype_), count, dtype_,
                    device_, device_index_);
}

std::string TensorView::describe() const {
  // Appended piece by piece: GCC 12 warns (-Wrestrict, falsely) on a chain of operator+.
  std::string text = dtype_name(dtype_);
  text += '[';
  text += std::to_string(numel_);
  text += "] on ";
  text += device_name(device_);
  if (device_ == Device::kCuda) {
    text += ':';
    text += std::to_string(device_index_);
  }
  return text;
}

}  // namespace gradcomm
