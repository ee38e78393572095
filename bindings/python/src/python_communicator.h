// PythonCommunicator: a gradcomm::Communicator whose collectives are carried out by a
// Python object, in practice torch.distributed on the process group DDP already runs.
//
// The Exchanger (and so the DDP hooks), and C++ algorithms that own their communication
// (the 1-bit compressed allreduce, the L-GreCo error-table agreement), then run unchanged
// inside a DDP hook: their buffers are handed to Python as DLPack capsules over gradcomm's
// memory, which torch imports without a copy (host or device memory alike). A backend
// method returns a torch.distributed Work for a collective still in flight (waited and
// tested through the Work handle) or None when it has finished. Every call into Python
// takes the GIL itself, so C++ callers may release it.
#pragma once

#include <pybind11/pybind11.h>

#include <initializer_list>
#include <span>
#include <string>

#include "gradcomm/communicator.h"

namespace gradcomm::python {

class PythonCommunicator final : public Communicator {
 public:
  // `backend` has allreduce(send, recv, op), allgather(send, recv), alltoall(send, recv),
  // broadcast(buffer, root) and barrier(), taking numpy arrays and op names.
  // `device`: where the buffers it carries live (the Exchanger's arenas follow it).
  PythonCommunicator(pybind11::object backend, int rank, int size, Device device = Device::kCpu);
  ~PythonCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return device_; }
  std::string describe() const override;

  WorkHandle allreduce(TensorView send, TensorView recv, ReduceOp op) override;
  WorkHandle allgather(TensorView send, TensorView recv) override;
  WorkHandle allgatherv(TensorView send, TensorView recv,
                        std::span<const std::size_t> counts) override;
  WorkHandle alltoall(TensorView send, TensorView recv) override;
  WorkHandle alltoallv(TensorView send, std::span<const std::size_t> send_counts, TensorView recv,
                       std::span<const std::size_t> recv_counts) override;
  WorkHandle broadcast(TensorView buffer, int root) override;
  WorkHandle barrier() override;
  void abort(const std::string& reason) override;

 private:
  // Calls backend.method(capsules of `buffers`..., extra) and wraps what it returns.
  WorkHandle call(const char* method, std::initializer_list<TensorView> buffers,
                  const pybind11::object& extra = pybind11::object());
  void check_device(TensorView view, const char* what) const;

  pybind11::object backend_;
  int rank_;
  int size_;
  Device device_;
  std::string aborted_;  // non-empty once abort() was called: every later call throws
};

void bind_python_communicator(pybind11::module_& m);

}  // namespace gradcomm::python
