#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "buffers.h"
#include "gradcomm/error.h"
#include "gradcomm/gradcomm.h"
#include "gradcomm/layer.h"

namespace py = pybind11;

namespace gradcomm::python {

DType parse_dtype(const std::string& name) {
  for (DType d : {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kInt32,
                  DType::kUInt32, DType::kUInt8}) {
    if (name == dtype_name(d)) return d;
  }
  GRADCOMM_THROW(ErrorCode::kInvalidArgument, "unknown dtype '", name,
                 "' (expected float32, float16, bfloat16, int32, uint32 or uint8)");
}

void bind_core(py::module_& m) {
  // gradcomm.Error carries the C++ error code; misuse (bad argument, sizes that disagree)
  // is also a ValueError, so callers can catch it the way they catch torch's own checks.
  static py::exception<Error> error(m, "Error", PyExc_RuntimeError);
  static py::object invalid_argument = [&] {
    py::object type = py::reinterpret_steal<py::object>(PyErr_NewExceptionWithDoc(
        "gradcomm._gradcomm.InvalidArgumentError",
        "A gradcomm argument is invalid or sizes disagree (also a ValueError).",
        py::make_tuple(error, py::handle(PyExc_ValueError)).ptr(), nullptr));
    m.attr("InvalidArgumentError") = type;
    return type;
  }();
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      const bool misuse = e.code() == ErrorCode::kInvalidArgument ||
                          e.code() == ErrorCode::kSizeMismatch;
      py::object type = misuse ? invalid_argument : py::object(error);
      py::object instance = type(e.what());
      instance.attr("code") = error_code_name(e.code());
      PyErr_SetObject(type.ptr(), instance.ptr());
    }
  });

  m.def("version", [] { return std::string(version()); }, "The C++ library's version.");

  py::class_<LayerSpec>(m, "LayerSpec", "One gradient tensor as the compressors see it.")
      .def(py::init([](std::string name, std::size_t numel, int ndim, bool force_dense,
                       const std::string& dtype, const std::string& device, int device_index) {
             GRADCOMM_CHECK_ARG(device == "cpu" || device == "cuda", "LayerSpec: device must be ",
                                "'cpu' or 'cuda', got '", device, "'");
             LayerSpec spec{std::move(name), numel, ndim, force_dense};
             spec.dtype = parse_dtype(dtype);
             spec.device = device == "cuda" ? Device::kCuda : Device::kCpu;
             spec.device_index = device_index;
             return spec;
           }),
           py::arg("name"), py::arg("numel"), py::arg("ndim") = 1, py::arg("force_dense") = false,
           py::arg("dtype") = "float32", py::arg("device") = "cpu", py::arg("device_index") = 0)
      .def_readwrite("name", &LayerSpec::name)
      .def_readwrite("numel", &LayerSpec::numel)
      .def_readwrite("ndim", &LayerSpec::ndim)
      .def_readwrite("force_dense", &LayerSpec::force_dense)
      .def_property_readonly("dtype", [](const LayerSpec& l) { return dtype_name(l.dtype); })
      .def_property_readonly("device", [](const LayerSpec& l) { return device_name(l.device); })
      .def_readonly("device_index", &LayerSpec::device_index)
      .def("__repr__", [](const LayerSpec& l) {
        return "LayerSpec(name='" + l.name + "', numel=" + std::to_string(l.numel) +
               ", ndim=" + std::to_string(l.ndim) + (l.force_dense ? ", force_dense=True" : "") +
               ", dtype='" + dtype_name(l.dtype) + "', device='" + device_name(l.device) + "')";
      });

  m.def("allreduce_wire_bytes", &allreduce_wire_bytes, py::arg("nbytes"), py::arg("world_size"),
        "Bytes one rank sends in a ring allreduce of nbytes: 2(p-1)/p * nbytes.");
  m.def("allgather_wire_bytes", &allgather_wire_bytes, py::arg("nbytes_per_rank"),
        py::arg("world_size"), "Bytes one rank sends in an allgather: (p-1) * nbytes.");

  m.def(
      "describe_buffer",
      [](py::handle tensor) { return borrow(tensor, "tensor").view.describe(); },
      py::arg("tensor"),
      "How gradcomm sees a buffer ('float32[12] on cpu'), after the same checks every kernel "
      "call makes: contiguous, a supported dtype and device.");
}

}  // namespace gradcomm::python
