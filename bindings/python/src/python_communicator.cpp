#include "python_communicator.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "bindings.h"
#include "buffers.h"

namespace py = pybind11;

namespace gradcomm::python {
namespace {

// Every collective has completed when the backend returns, so all handles share one
// finished Work that is never freed: no allocation per collective.
class DoneWork final : public Work {
 public:
  void wait() override {}
  bool test() override { return true; }
  void release() noexcept override {}
};

WorkHandle done() {
  static DoneWork finished;
  return WorkHandle(&finished);
}

// numpy names the backend understands. uint32 travels as int32: torch has no uint32
// tensors before 2.3, and moving or summing bits is the same for both.
const char* numpy_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kInt32: case DType::kUInt32: return "int32";
    case DType::kUInt8: return "uint8";
    case DType::kBFloat16: break;
  }
  GRADCOMM_THROW(ErrorCode::kUnsupported, "PythonCommunicator: ", dtype_name(dtype),
                 " buffers are not supported (numpy has no bfloat16)");
}

// A numpy array over the view's memory, without a copy: the `base` object stops numpy
// from copying, and the caller keeps the memory alive for the (blocking) call.
py::array as_numpy(TensorView view) {
  GRADCOMM_CHECK(view.device() == Device::kCpu, ErrorCode::kUnsupported,
                 "PythonCommunicator takes host buffers, got ", view.describe());
  const py::dtype dtype(numpy_name(view.dtype()));
  return py::array(dtype, {static_cast<py::ssize_t>(view.numel())}, {dtype.itemsize()},
                   view.data(), py::none());
}

// A blocking Python method for a (send, recv) collective.
auto blocking_pair(WorkHandle (Communicator::*collective)(TensorView, TensorView),
                   const char* name) {
  return [collective, name](Communicator& c, py::handle send, py::handle recv) {
    const Borrowed s = borrow(send, (std::string(name) + ": send").c_str());
    const Borrowed r = borrow(recv, (std::string(name) + ": recv").c_str());
    (c.*collective)(s.view, r.view)->wait();
  };
}

}  // namespace

PythonCommunicator::PythonCommunicator(py::object backend, int rank, int size)
    : backend_(std::move(backend)), rank_(rank), size_(size) {
  GRADCOMM_CHECK_ARG(size >= 1 && rank >= 0 && rank < size, "PythonCommunicator: rank ", rank,
                     " of size ", size);
  for (const char* method : {"allreduce", "allgather", "alltoall", "broadcast", "barrier"}) {
    GRADCOMM_CHECK_ARG(py::hasattr(backend_, method), "PythonCommunicator: the backend (",
                       py::str(py::type::handle_of(backend_)).cast<std::string>(),
                       ") has no method ", method);
  }
}

std::string PythonCommunicator::describe() const {
  return "python(" + py::str(backend_).cast<std::string>() + ", rank " + std::to_string(rank_) +
         " of " + std::to_string(size_) + ")";
}

py::object PythonCommunicator::call(const char* method, const py::args& args) {
  GRADCOMM_CHECK(aborted_.empty(), ErrorCode::kCommunication, "PythonCommunicator rank ", rank_,
                 ": ", method, " after abort (", aborted_, ")");
  try {
    return backend_.attr(method)(*args);
  } catch (py::error_already_set& e) {
    GRADCOMM_THROW(ErrorCode::kCommunication, "PythonCommunicator rank ", rank_, " of ", size_,
                   ": ", method, " failed: ", py::str(e.value()).cast<std::string>());
  }
}

WorkHandle PythonCommunicator::allreduce(TensorView send, TensorView recv, ReduceOp op) {
  check_allreduce(send, recv);
  if (op != ReduceOp::kSum && send.dtype() == DType::kUInt32) {
    // Ordering uint32 as int32 would be wrong above 2^31: widen to int64 (torch has no
    // uint32). Only setup paths (the layer agreement) take max/min of uint32.
    const auto* in = static_cast<const std::uint32_t*>(send.data());
    py::array_t<std::int64_t> wide(static_cast<py::ssize_t>(send.numel()));
    std::copy_n(in, send.numel(), wide.mutable_data());
    call("allreduce", py::make_tuple(wide, wide, reduce_op_name(op)));
    std::copy_n(wide.data(), send.numel(), static_cast<std::uint32_t*>(recv.data()));
  } else {
    call("allreduce", py::make_tuple(as_numpy(send), as_numpy(recv), reduce_op_name(op)));
  }
  count_traffic(allreduce_wire_bytes(send.nbytes(), size_));
  return done();
}

WorkHandle PythonCommunicator::allgather(TensorView send, TensorView recv) {
  check_allgather(send, recv);
  call("allgather", py::make_tuple(as_numpy(send), as_numpy(recv)));
  count_traffic(allgather_wire_bytes(send.nbytes(), size_));
  return done();
}

WorkHandle PythonCommunicator::allgatherv(TensorView send, TensorView recv,
                                          std::span<const std::size_t> counts) {
  check_allgatherv(send, recv, counts);
  // Through the fixed-size allgather: pad every rank's part to the largest count. Only
  // setup paths use allgatherv, so the temporary is not on a per-step path.
  const std::size_t most = *std::max_element(counts.begin(), counts.end());
  const std::size_t elem = dtype_size(send.dtype());
  std::vector<std::byte> padded_send(most * elem), padded_recv(most * elem * size_);
  std::copy_n(static_cast<const std::byte*>(send.data()), send.nbytes(), padded_send.data());
  allgather(TensorView(padded_send.data(), padded_send.size(), DType::kUInt8),
            TensorView(padded_recv.data(), padded_recv.size(), DType::kUInt8));
  auto* out = static_cast<std::byte*>(recv.data());
  for (std::size_t r = 0; r < counts.size(); ++r) {
    out = std::copy_n(padded_recv.data() + r * most * elem, counts[r] * elem, out);
  }
  return done();
}

WorkHandle PythonCommunicator::alltoall(TensorView send, TensorView recv) {
  check_alltoall(send, recv);
  call("alltoall", py::make_tuple(as_numpy(send), as_numpy(recv)));
  count_traffic(alltoall_wire_bytes(send.nbytes(), size_));
  return done();
}

WorkHandle PythonCommunicator::broadcast(TensorView buffer, int root) {
  check_broadcast(buffer, root);
  call("broadcast", py::make_tuple(as_numpy(buffer), root));
  count_traffic(rank_ == root ? buffer.nbytes() : 0);
  return done();
}

WorkHandle PythonCommunicator::barrier() {
  call("barrier", py::make_tuple());
  return done();
}

void PythonCommunicator::abort(const std::string& reason) {
  aborted_ = reason.empty() ? "aborted" : reason;
}

void bind_python_communicator(py::module_& m) {
  py::class_<Communicator>(m, "Communicator", "gradcomm's collective interface.")
      .def_property_readonly("rank", &Communicator::rank)
      .def_property_readonly("size", &Communicator::size)
      .def("describe", &Communicator::describe)
      .def_property_readonly("bytes_sent", [](const Communicator& c) { return c.traffic().bytes_sent; })
      .def_property_readonly("collectives",
                             [](const Communicator& c) { return c.traffic().collectives; })
      .def("reset_traffic", &Communicator::reset_traffic)
      // Blocking forms of the collectives on arrays or tensors (the GIL stays held: a
      // PythonCommunicator runs them in Python).
      .def(
          "allreduce",
          [](Communicator& c, py::handle send, py::handle recv, const std::string& op) {
            const Borrowed s = borrow(send, "allreduce: send");
            const Borrowed r = borrow(recv, "allreduce: recv");
            ReduceOp reduce = ReduceOp::kSum;
            if (op == "max") {
              reduce = ReduceOp::kMax;
            } else if (op == "min") {
              reduce = ReduceOp::kMin;
            } else {
              GRADCOMM_CHECK_ARG(op == "sum", "allreduce: op must be sum, max or min, got '", op, "'");
            }
            c.allreduce(s.view, r.view, reduce)->wait();
          },
          py::arg("send"), py::arg("recv"), py::arg("op") = "sum")
      .def("allgather", blocking_pair(&Communicator::allgather, "allgather"), py::arg("send"),
           py::arg("recv"))
      .def(
          "allgatherv",
          [](Communicator& c, py::handle send, py::handle recv, const std::vector<std::size_t>& counts) {
            const Borrowed s = borrow(send, "allgatherv: send");
            const Borrowed r = borrow(recv, "allgatherv: recv");
            c.allgatherv(s.view, r.view, counts)->wait();
          },
          py::arg("send"), py::arg("recv"), py::arg("counts"))
      .def("alltoall", blocking_pair(&Communicator::alltoall, "alltoall"), py::arg("send"),
           py::arg("recv"))
      .def(
          "broadcast",
          [](Communicator& c, py::handle buffer, int root) {
            const Borrowed b = borrow(buffer, "broadcast: buffer");
            c.broadcast(b.view, root)->wait();
          },
          py::arg("buffer"), py::arg("root"))
      .def("barrier", [](Communicator& c) { c.barrier()->wait(); });
  py::class_<PythonCommunicator, Communicator>(
      m, "PythonCommunicator",
      "A Communicator whose collectives a Python backend runs (gradcomm.torch uses "
      "torch.distributed on DDP's process group).")
      .def(py::init<py::object, int, int>(), py::arg("backend"), py::arg("rank"),
           py::arg("size"));
}

}  // namespace gradcomm::python
