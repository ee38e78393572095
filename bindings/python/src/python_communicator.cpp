#include "python_communicator.h"

#include <pybind11/stl.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "bindings.h"
#include "buffers.h"

namespace py = pybind11;

namespace gradcomm::python {
namespace {

// A collective the backend has already finished (it returned None): all such handles share
// one object that is never freed.
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

// A collective in flight in the backend: `work` is what it returned (a torch.distributed
// Work with wait() and is_completed()). The GIL is taken for every call into it, so the
// engine may run with the GIL released.
class PendingWork final : public Work {
 public:
  PendingWork(py::object work, const char* what, int rank) : work_(std::move(work)), what_(what), rank_(rank) {}
  ~PendingWork() override {
    py::gil_scoped_acquire gil;
    work_ = py::object();
  }
  void wait() override {
    py::gil_scoped_acquire gil;
    if (!work_) return;
    try {
      work_.attr("wait")();
    } catch (py::error_already_set& e) {
      work_ = py::object();
      GRADCOMM_THROW(ErrorCode::kCommunication, "PythonCommunicator rank ", rank_, ": ", what_,
                     " failed: ", py::str(e.value()).cast<std::string>());
    }
    work_ = py::object();
  }
  bool test() override {
    py::gil_scoped_acquire gil;
    return !work_ || work_.attr("is_completed")().cast<bool>();
  }
  void release() noexcept override {
    try {
      wait();
    } catch (...) {  // the caller dropped the handle: nobody to tell
    }
    delete this;
  }

 private:
  py::object work_;
  const char* what_;
  int rank_;
};

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

PythonCommunicator::PythonCommunicator(py::object backend, int rank, int size, Device device)
    : backend_(std::move(backend)), rank_(rank), size_(size), device_(device) {
  GRADCOMM_CHECK_ARG(size >= 1 && rank >= 0 && rank < size, "PythonCommunicator: rank ", rank,
                     " of size ", size);
  for (const char* method : {"allreduce", "allgather", "alltoall", "broadcast", "barrier"}) {
    GRADCOMM_CHECK_ARG(py::hasattr(backend_, method), "PythonCommunicator: the backend (",
                       py::str(py::type::handle_of(backend_)).cast<std::string>(),
                       ") has no method ", method);
  }
}

PythonCommunicator::~PythonCommunicator() {
  py::gil_scoped_acquire gil;
  backend_ = py::object();
}

std::string PythonCommunicator::describe() const {
  py::gil_scoped_acquire gil;
  return "python(" + py::str(backend_).cast<std::string>() + ", rank " + std::to_string(rank_) +
         " of " + std::to_string(size_) + ")";
}

void PythonCommunicator::check_device(TensorView view, const char* what) const {
  GRADCOMM_CHECK(view.device() == device_ || view.empty(), ErrorCode::kInvalidArgument,
                 "PythonCommunicator rank ", rank_, ": ", what, " got ", view.describe(),
                 "; this communicator carries ", device_name(device_), " buffers");
}

WorkHandle PythonCommunicator::call(const char* method, std::initializer_list<TensorView> buffers,
                                    const py::object& extra) {
  py::gil_scoped_acquire gil;
  GRADCOMM_CHECK(aborted_.empty(), ErrorCode::kCommunication, "PythonCommunicator rank ", rank_,
                 ": ", method, " after abort (", aborted_, ")");
  py::list args;
  for (const TensorView& view : buffers) args.append(export_dlpack(view));
  if (extra) args.append(extra);
  py::object work;
  try {
    work = backend_.attr(method)(*args);
  } catch (py::error_already_set& e) {
    GRADCOMM_THROW(ErrorCode::kCommunication, "PythonCommunicator rank ", rank_, " of ", size_,
                   ": ", method, " failed: ", py::str(e.value()).cast<std::string>());
  }
  if (work.is_none()) return done();
  return WorkHandle(new PendingWork(std::move(work), method, rank_));
}

WorkHandle PythonCommunicator::allreduce(TensorView send, TensorView recv, ReduceOp op) {
  check_allreduce(send, recv);
  check_device(send, "allreduce");
  count_traffic(allreduce_wire_bytes(send.nbytes(), size_));
  if (op != ReduceOp::kSum && send.dtype() == DType::kUInt32) {
    // Ordering uint32 as int32 would be wrong above 2^31: widen to int64 (torch has no
    // uint32). Only setup paths (the layer agreement) take max/min of uint32, on the host.
    GRADCOMM_CHECK(send.device() == Device::kCpu, ErrorCode::kUnsupported,
                   "PythonCommunicator: max/min of uint32 on ", send.describe());
    const auto* in = static_cast<const std::uint32_t*>(send.data());
    std::vector<std::int64_t> wide(in, in + send.numel());
    py::gil_scoped_acquire gil;
    py::capsule capsule = export_dlpack(wide.data(), wide.size(), 0, 64, Device::kCpu, 0);
    try {
      py::object work = backend_.attr("allreduce")(capsule, capsule, reduce_op_name(op));
      if (!work.is_none()) work.attr("wait")();
    } catch (py::error_already_set& e) {
      GRADCOMM_THROW(ErrorCode::kCommunication, "PythonCommunicator rank ", rank_, " of ", size_,
                     ": allreduce failed: ", py::str(e.value()).cast<std::string>());
    }
    std::copy(wide.begin(), wide.end(), static_cast<std::uint32_t*>(recv.data()));
    return done();
  }
  return call("allreduce", {send, recv}, py::str(reduce_op_name(op)));
}

WorkHandle PythonCommunicator::allgather(TensorView send, TensorView recv) {
  check_allgather(send, recv);
  check_device(send, "allgather");
  // Nothing to move, and gloo's all_gather of zero bytes dies of SIGFPE (torch 1.13): the
  // layer agreement gathers zero layer records when it explains a schedule mismatch.
  // Every rank passes the same size, so every rank skips alike.
  if (recv.nbytes() == 0) return done();
  count_traffic(allgather_wire_bytes(send.nbytes(), size_));
  return call("allgather", {send, recv});
}

WorkHandle PythonCommunicator::allgatherv(TensorView send, TensorView recv,
                                          std::span<const std::size_t> counts) {
  check_allgatherv(send, recv, counts);
  GRADCOMM_CHECK(send.device() == Device::kCpu, ErrorCode::kUnsupported,
                 "PythonCommunicator: allgatherv takes host buffers (a setup path), got ",
                 send.describe());
  // Through the fixed-size allgather: pad every rank's part to the largest count. Only
  // setup paths use allgatherv, so the temporary is not on a per-step path.
  const std::size_t most = *std::max_element(counts.begin(), counts.end());
  const std::size_t elem = dtype_size(send.dtype());
  std::vector<std::byte> padded_send(most * elem), padded_recv(most * elem * size_);
  std::copy_n(static_cast<const std::byte*>(send.data()), send.nbytes(), padded_send.data());
  allgather(TensorView(padded_send.data(), padded_send.size(), DType::kUInt8),
            TensorView(padded_recv.data(), padded_recv.size(), DType::kUInt8))
      ->wait();
  auto* out = static_cast<std::byte*>(recv.data());
  for (std::size_t r = 0; r < counts.size(); ++r) {
    out = std::copy_n(padded_recv.data() + r * most * elem, counts[r] * elem, out);
  }
  return done();
}

WorkHandle PythonCommunicator::alltoall(TensorView send, TensorView recv) {
  check_alltoall(send, recv);
  check_device(send, "alltoall");
  count_traffic(alltoall_wire_bytes(send.nbytes(), size_));
  return call("alltoall", {send, recv});
}

WorkHandle PythonCommunicator::alltoallv(TensorView send, std::span<const std::size_t> send_counts,
                                         TensorView recv, std::span<const std::size_t> recv_counts) {
  check_alltoallv(send, send_counts, recv, recv_counts);
  check_device(send, "alltoallv");
  count_traffic(alltoallv_wire_bytes(send_counts, dtype_size(send.dtype()), rank_));
  py::gil_scoped_acquire gil;
  py::list counts;
  counts.append(py::cast(std::vector<std::size_t>(send_counts.begin(), send_counts.end())));
  counts.append(py::cast(std::vector<std::size_t>(recv_counts.begin(), recv_counts.end())));
  return call("alltoallv", {send, recv}, counts);
}

WorkHandle PythonCommunicator::broadcast(TensorView buffer, int root) {
  check_broadcast(buffer, root);
  check_device(buffer, "broadcast");
  count_traffic(rank_ == root ? buffer.nbytes() : 0);
  return call("broadcast", {buffer}, py::int_(root));
}

WorkHandle PythonCommunicator::barrier() { return call("barrier", {}); }

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
          "alltoallv",
          [](Communicator& c, py::handle send, const std::vector<std::size_t>& send_counts,
             py::handle recv, const std::vector<std::size_t>& recv_counts) {
            const Borrowed s = borrow(send, "alltoallv: send");
            const Borrowed r = borrow(recv, "alltoallv: recv");
            c.alltoallv(s.view, send_counts, r.view, recv_counts)->wait();
          },
          py::arg("send"), py::arg("send_counts"), py::arg("recv"), py::arg("recv_counts"))
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
      .def(py::init([](py::object backend, int rank, int size, const std::string& device) {
             GRADCOMM_CHECK_ARG(device == "cpu" || device == "cuda",
                                "PythonCommunicator: device must be 'cpu' or 'cuda', got '", device, "'");
             return std::make_unique<PythonCommunicator>(std::move(backend), rank, size,
                                                         device == "cuda" ? Device::kCuda : Device::kCpu);
           }),
           py::arg("backend"), py::arg("rank"), py::arg("size"), py::arg("device") = "cpu");
}

}  // namespace gradcomm::python
