#include "buffers.h"

#include <cstdint>
#include <sstream>
#include <string>

namespace py = pybind11;

namespace gradcomm::python {
namespace {

// The DLPack ABI (v0.x: the unversioned "dltensor" capsule that torch 1.10-2.x, numpy and
// cupy return from a plain __dlpack__() call). Declared here rather than vendored: these
// four structs are the whole of what we read, and their layout is frozen by the spec.
struct DLDevice {
  std::int32_t device_type;  // 1 = CPU, 2 = CUDA, 3 = CUDA host (pinned)
  std::int32_t device_id;
};
struct DLDataType {
  std::uint8_t code;  // 0 = int, 1 = uint, 2 = float, 4 = bfloat
  std::uint8_t bits;
  std::uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  std::int32_t ndim;
  DLDataType dtype;
  std::int64_t* shape;
  std::int64_t* strides;  // in elements; null means compact row-major
  std::uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor*);
};

constexpr std::int32_t kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3;

std::optional<DType> dtype_from_dlpack(DLDataType t) {
  if (t.lanes != 1) return std::nullopt;
  if (t.code == 2 && t.bits == 32) return DType::kFloat32;
  if (t.code == 2 && t.bits == 16) return DType::kFloat16;
  if (t.code == 4 && t.bits == 16) return DType::kBFloat16;
  if (t.code == 0 && t.bits == 32) return DType::kInt32;
  if (t.code == 1 && t.bits == 32) return DType::kUInt32;
  if (t.code == 1 && t.bits == 8) return DType::kUInt8;
  return std::nullopt;
}

std::string dlpack_dtype_text(DLDataType t) {
  static const char* codes[] = {"int", "uint", "float", "opaque", "bfloat", "complex", "bool"};
  std::ostringstream out;
  out << (t.code < 7 ? codes[t.code] : "code?") << int(t.bits);
  if (t.lanes != 1) out << "x" << t.lanes;
  return out.str();
}

std::string shape_text(const DLTensor& t, const std::int64_t* values) {
  std::ostringstream out;
  out << "(";
  for (int i = 0; i < t.ndim; ++i) out << (i ? ", " : "") << values[i];
  out << (t.ndim == 1 ? ",)" : ")");
  return out.str();
}

std::string python_type_name(py::handle object) {
  return py::str(py::type::handle_of(object).attr("__qualname__")).cast<std::string>();
}

}  // namespace

Borrowed borrow(py::handle tensor, const char* what, std::optional<DType> expected) {
  py::object capsule;
  if (PyCapsule_CheckExact(tensor.ptr())) {
    capsule = py::reinterpret_borrow<py::object>(tensor);
  } else {
    GRADCOMM_CHECK_ARG(py::hasattr(tensor, "__dlpack__"), what,
                       ": expected a tensor or array (an object with __dlpack__), got ",
                       python_type_name(tensor));
    try {
      capsule = tensor.attr("__dlpack__")();
    } catch (py::error_already_set& e) {
      // torch refuses tensors that require grad, numpy read-only arrays: say which.
      const std::string reason = py::str(e.value()).cast<std::string>();
      GRADCOMM_THROW(ErrorCode::kInvalidArgument, what, ": cannot export its buffer (", reason,
                     ")");
    }
  }
  const char* name = PyCapsule_GetName(capsule.ptr());
  GRADCOMM_CHECK_ARG(name != nullptr && std::string(name) == "dltensor", what,
                     ": expected an unconsumed DLPack capsule named 'dltensor', got '",
                     name ? name : "(null)", "'");
  auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
  if (managed == nullptr) throw py::error_already_set();
  const DLTensor& t = managed->dl_tensor;

  const std::optional<DType> dtype = dtype_from_dlpack(t.dtype);
  GRADCOMM_CHECK_ARG(dtype.has_value(), what, ": unsupported dtype ", dlpack_dtype_text(t.dtype),
                     " (gradcomm takes float32, float16, bfloat16, int32, uint32, uint8)");
  if (expected) {
    GRADCOMM_CHECK_ARG(*dtype == *expected, what, ": expected dtype ", dtype_name(*expected),
                       ", got ", dtype_name(*dtype), " of shape ", shape_text(t, t.shape));
  }
  Device device;
  if (t.device.device_type == kDLCPU || t.device.device_type == kDLCUDAHost) {
    device = Device::kCpu;
  } else if (t.device.device_type == kDLCUDA) {
    device = Device::kCuda;
  } else {
    GRADCOMM_THROW(ErrorCode::kInvalidArgument, what, ": unsupported DLPack device type ",
                   t.device.device_type, " (gradcomm takes CPU and CUDA buffers)");
  }

  std::size_t numel = 1;
  for (int i = 0; i < t.ndim; ++i) {
    GRADCOMM_CHECK_ARG(t.shape[i] >= 0, what, ": negative extent in shape ", shape_text(t, t.shape));
    numel *= static_cast<std::size_t>(t.shape[i]);
  }
  if (t.strides != nullptr && numel > 1) {
    // Row-major compact, ignoring the strides of extent-1 dimensions (torch leaves them
    // arbitrary). A transposed or sliced view would make every kernel read wrong data.
    std::int64_t expected_stride = 1;
    for (int i = t.ndim - 1; i >= 0; --i) {
      if (t.shape[i] == 1) continue;
      GRADCOMM_CHECK_ARG(t.strides[i] == expected_stride, what,
                         ": expected a contiguous buffer, got shape ", shape_text(t, t.shape),
                         " with strides ", shape_text(t, t.strides),
                         " (call .contiguous() first)");
      expected_stride *= t.shape[i];
    }
  }
  void* data = static_cast<char*>(t.data) + t.byte_offset;
  return {std::move(capsule), TensorView(data, numel, *dtype, device, t.device.device_id)};
}

namespace {

// The descriptor a capsule owns: the DLManagedTensor and the shape it points to.
struct ExportedTensor {
  DLManagedTensor managed{};
  std::int64_t shape[1] = {0};
};

void delete_exported(DLManagedTensor* managed) {
  delete static_cast<ExportedTensor*>(managed->manager_ctx);
}

// DLPack's dtype code and bits of a gradcomm dtype, as exported.
std::pair<std::uint8_t, std::uint8_t> dlpack_dtype(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return {2, 32};
    case DType::kFloat16: return {2, 16};
    case DType::kBFloat16: return {4, 16};
    case DType::kInt32: case DType::kUInt32: return {0, 32};
    case DType::kUInt8: return {1, 8};
  }
  return {1, 8};
}

}  // namespace

py::capsule export_dlpack(void* data, std::size_t numel, std::uint8_t code, std::uint8_t bits,
                          Device device, int device_index) {
  auto* exported = new ExportedTensor();
  exported->shape[0] = static_cast<std::int64_t>(numel);
  DLTensor& t = exported->managed.dl_tensor;
  t.data = data;
  t.device = {device == Device::kCuda ? kDLCUDA : kDLCPU, device == Device::kCuda ? device_index : 0};
  t.ndim = 1;
  t.dtype = {code, bits, 1};
  t.shape = exported->shape;
  t.strides = nullptr;
  t.byte_offset = 0;
  exported->managed.manager_ctx = exported;
  exported->managed.deleter = &delete_exported;
  // The consumer renames a capsule it takes to "used_dltensor" and calls the deleter
  // itself; one never consumed (an error before import) is deleted here.
  return py::capsule(&exported->managed, "dltensor", [](PyObject* capsule) {
    if (PyCapsule_IsValid(capsule, "dltensor")) {
      auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
      if (managed != nullptr && managed->deleter != nullptr) managed->deleter(managed);
    }
  });
}

py::capsule export_dlpack(TensorView view) {
  const auto [code, bits] = dlpack_dtype(view.dtype());
  return export_dlpack(view.data(), view.numel(), code, bits, view.device(), view.device_index());
}

py::array state_view(std::span<const float> values, py::handle owner) {
  py::array view(py::dtype::of<float>(), {static_cast<py::ssize_t>(values.size())},
                 {static_cast<py::ssize_t>(sizeof(float))}, values.data(), owner);
  py::detail::array_proxy(view.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return view;
}

Borrowed borrow(py::handle tensor, const char* what, DType expected, std::size_t numel) {
  Borrowed b = borrow(tensor, what, expected);
  GRADCOMM_CHECK(b.view.numel() == numel, ErrorCode::kSizeMismatch, what, ": expected ", numel,
                 " elements, got ", b.view.describe());
  return b;
}

}  // namespace gradcomm::python
