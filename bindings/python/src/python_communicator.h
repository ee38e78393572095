// PythonCommunicator: a gradcomm::Communicator whose collectives are carried out by a
// Python object, in practice torch.distributed on the process group DDP already runs.
//
// C++ algorithms that own their communication (the 1-bit compressed allreduce, the
// L-GreCo error-table agreement) then run unchanged inside a DDP hook: their buffers are
// handed to Python as zero-copy numpy arrays, which torch.from_numpy wraps. Every call
// completes before it returns (the backend's collectives are blocking), so the work
// handles are already done. Host buffers only: torch offers no zero-copy way to wrap a
// device pointer without linking libtorch.
#pragma once

#include <pybind11/pybind11.h>

#include <span>
#include <string>

#include "gradcomm/communicator.h"

namespace gradcomm::python {

class PythonCommunicator final : public Communicator {
 public:
  // `backend` has allreduce(send, recv, op), allgather(send, recv), alltoall(send, recv),
  // broadcast(buffer, root) and barrier(), taking numpy arrays and op names.
  PythonCommunicator(pybind11::object backend, int rank, int size);

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return Device::kCpu; }
  std::string describe() const override;

  WorkHandle allreduce(TensorView send, TensorView recv, ReduceOp op) override;
  WorkHandle allgather(TensorView send, TensorView recv) override;
  WorkHandle allgatherv(TensorView send, TensorView recv,
                        std::span<const std::size_t> counts) override;
  WorkHandle alltoall(TensorView send, TensorView recv) override;
  WorkHandle broadcast(TensorView buffer, int root) override;
  WorkHandle barrier() override;
  void abort(const std::string& reason) override;

 private:
  pybind11::object call(const char* method, const pybind11::args& args);

  pybind11::object backend_;
  int rank_;
  int size_;
  std::string aborted_;  // non-empty once abort() was called: every later call throws
};

void bind_python_communicator(pybind11::module_& m);

}  // namespace gradcomm::python
