// The 1-bit compressed allreduce and the C++ OneBitAdam (include/gradcomm/onebit.h), for
// gradcomm.torch.OneBitAdam: the optimizer's arithmetic and what crosses the network are
// computed here; Python hands over the tensors.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <vector>

#include "bindings.h"
#include "buffers.h"
#include "gradcomm/onebit.h"

namespace py = pybind11;

namespace gradcomm::python {
namespace {

// The C++ OneBitAdam over buffers Python owns: the borrowed capsules keep the parameter
// memory alive as long as the optimizer.
struct NativeOneBitAdam {
  std::vector<Borrowed> params;
  std::unique_ptr<OneBitAdam> optimizer;

  // Views of one tensor per parameter (all of them, or the compressed ones), in
  // registration order, each in its parameter's dtype; `held` keeps their buffers alive
  // for the call.
  std::vector<TensorView> gradients(const py::list& tensors, std::vector<Borrowed>& held,
                                    bool compressed_only, const char* call) const {
    std::vector<TensorView> views;
    std::size_t index = 0;
    for (std::size_t i = 0; i < params.size() && index < tensors.size(); ++i) {
      if (compressed_only && !compressed[i]) continue;
      held.push_back(borrow(tensors[index++], call, params[i].view.dtype(), params[i].view.numel()));
      views.push_back(held.back().view);
    }
    GRADCOMM_CHECK(index == tensors.size(), ErrorCode::kSizeMismatch, "NativeOneBitAdam.", call, ": ",
                   tensors.size(), " tensors for ", params.size(), " parameters");
    return views;
  }
  std::vector<char> compressed;
};

// The options both bindings take from Python; NativeOneBitAdam adds its other fields.
OneBitAdamOptions adam_options(float lr, float beta1, float beta2, float eps, float weight_decay,
                               std::int64_t freeze_step) {
  return OneBitAdamOptions{.lr = lr, .beta1 = beta1, .beta2 = beta2, .eps = eps,
                           .weight_decay = weight_decay, .freeze_step = freeze_step};
}

}  // namespace

void bind_onebit(py::module_& m) {
  py::class_<OneBitErrorState>(m, "OneBitErrorState",
                               "One tensor's worker and server errors on this rank.")
      .def(py::init([](std::size_t numel, int world_size) {
             return OneBitErrorState(numel, world_size);
           }),
           py::arg("numel"), py::arg("world_size"))
      .def_property_readonly("numel", &OneBitErrorState::numel)
      .def_property_readonly("padded_numel", &OneBitErrorState::padded_numel)
      .def_property_readonly("chunk_numel", &OneBitErrorState::chunk_numel)
      .def_property_readonly("world_size", &OneBitErrorState::world_size)
      .def("zero", &OneBitErrorState::zero)
      .def("save", [](const OneBitErrorState& s) { return blob_to_bytes(s.save()); })
      .def("load", [](OneBitErrorState& s, const py::bytes& blob) { s.load(bytes_as_blob(blob)); });

  m.def(
      "check_onebit_adam_options",
      [](float lr, float beta1, float beta2, float eps, float weight_decay,
         std::int64_t freeze_step) {
        check_options(adam_options(lr, beta1, beta2, eps, weight_decay, freeze_step));
      },
      py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"),
      py::arg("freeze_step"),
      "Raises InvalidArgumentError, naming the option and its value, where NativeOneBitAdam "
      "would refuse these options.");

  const OneBitAdamOptions defaults;
  py::class_<NativeOneBitAdam>(
      m, "NativeOneBitAdam",
      "gradcomm's C++ OneBitAdam: step() takes this rank's local gradients and does the "
      "exchange and the update itself (for plain training loops; gradcomm.torch.OneBitAdam "
      "is the DDP form).")
      .def(py::init([](Communicator& comm, const std::vector<std::pair<std::string, py::object>>& params,
                       float lr, float beta1, float beta2, float eps, float weight_decay,
                       std::int64_t freeze_step, bool bias_correction, bool precondition,
                       std::size_t bucket_bytes) {
             auto self = std::make_unique<NativeOneBitAdam>();
             std::vector<OneBitParam> views;
             for (const auto& [name, tensor] : params) {
               self->params.push_back(borrow(tensor, "NativeOneBitAdam: parameter"));  // dtype: OneBitAdam checks
               views.push_back(OneBitParam{name, self->params.back().view, true, {}});
               self->compressed.push_back(1);
             }
             OneBitAdamOptions o = adam_options(lr, beta1, beta2, eps, weight_decay, freeze_step);
             o.bias_correction = bias_correction;
             o.precondition = precondition;
             o.bucket_bytes = bucket_bytes;
             self->optimizer = std::make_unique<OneBitAdam>(comm, std::move(views), o);
             return self;
           }),
           py::arg("comm"), py::arg("params"), py::arg("lr") = defaults.lr,
           py::arg("beta1") = defaults.beta1, py::arg("beta2") = defaults.beta2,
           py::arg("eps") = defaults.eps, py::arg("weight_decay") = defaults.weight_decay,
           py::arg("freeze_step") = defaults.freeze_step,
           py::arg("bias_correction") = defaults.bias_correction,
           py::arg("precondition") = defaults.precondition,
           py::arg("bucket_bytes") = defaults.bucket_bytes, py::keep_alive<1, 2>())
      .def("step",
           [](NativeOneBitAdam& self, const py::list& grads) {
             std::vector<Borrowed> held;
             std::vector<TensorView> views;
             for (std::size_t i = 0; i < grads.size(); ++i) {
               held.push_back(borrow(grads[i], "NativeOneBitAdam.step: gradient",
                                     i < self.params.size() ? self.params[i].view.dtype() : DType::kFloat32,
                                     i < self.params.size() ? self.params[i].view.numel() : 0));
               views.push_back(held.back().view);
             }
             self.optimizer->step(views);  // the GIL stays held: collectives may be Python
           },
           py::arg("grads"))
      .def("warmup_update",
           [](NativeOneBitAdam& self, const py::list& averaged) {
             std::vector<Borrowed> held;
             const std::vector<TensorView> views = self.gradients(averaged, held, false, "warmup_update");
             self.optimizer->warmup_update(views);
           },
           py::arg("averaged"),
           "Warm-up step from every parameter's gradient already averaged over the ranks.")
      .def("exchange_momentum",
           [](NativeOneBitAdam& self, const py::list& local, const py::list& momenta_out) {
             std::vector<Borrowed> held;
             const std::vector<TensorView> in = self.gradients(local, held, true, "exchange_momentum");
             const std::vector<TensorView> out = self.gradients(momenta_out, held, true, "exchange_momentum");
             // The GIL stays held: a PythonCommunicator runs its collectives in Python.
             return self.optimizer->exchange_momentum(in, out).nonfinite;
           },
           py::arg("local_grads"), py::arg("momenta_out"),
           "After the freeze: local momenta from this rank's gradients, their fused 1-bit "
           "allreduce, and the averaged momenta written into momenta_out; returns the "
           "non-finite elements this rank met (sent as 0).")
      .def("frozen_update", [](NativeOneBitAdam& self) { self.optimizer->frozen_update({}); },
           "After the freeze: the update from the exchanged momenta.")
      .def("set_lr", [](NativeOneBitAdam& self, float lr) { self.optimizer->set_lr(lr); },
           py::arg("lr"))
      .def("save_state", [](const NativeOneBitAdam& self) { return blob_to_bytes(self.optimizer->save_state()); })
      .def("load_state", [](NativeOneBitAdam& self, const py::bytes& blob) {
        self.optimizer->load_state(bytes_as_blob(blob));
      })
      .def_property_readonly("steps_done", [](const NativeOneBitAdam& s) { return s.optimizer->steps_done(); })
      .def_property_readonly("frozen", [](const NativeOneBitAdam& s) { return s.optimizer->frozen(); });

  m.def("onebit_padded_numel", &onebit_padded_numel, py::arg("numel"), py::arg("world_size"));
  m.def(
      "onebit_workspace_bytes",
      [](const std::vector<std::size_t>& numels, int world_size) {
        return onebit_workspace_bytes(numels, world_size);
      },
      py::arg("numels"), py::arg("world_size"));
  m.def(
      "onebit_wire_bytes",
      [](const std::vector<std::size_t>& numels, int world_size) {
        return onebit_wire_bytes(numels, world_size);
      },
      py::arg("numels"), py::arg("world_size"));
  m.def(
      "compressed_allreduce",
      [](Communicator& comm, const py::list& xs, const std::vector<OneBitErrorState*>& states,
         const py::list& outs, py::handle workspace) {
        GRADCOMM_CHECK(xs.size() == states.size() && xs.size() == outs.size(),
                       ErrorCode::kSizeMismatch, "compressed_allreduce: ", xs.size(),
                       " inputs, ", states.size(), " error states, ", outs.size(), " outputs");
        std::vector<Borrowed> held;
        held.reserve(2 * xs.size() + 1);
        std::vector<TensorView> x_views, out_views;
        for (std::size_t i = 0; i < xs.size(); ++i) {
          GRADCOMM_CHECK_ARG(states[i] != nullptr, "compressed_allreduce: error state ", i,
                             " is None");
          held.push_back(borrow(xs[i], "compressed_allreduce: x", DType::kFloat32,
                                states[i]->numel()));
          x_views.push_back(held.back().view);
          held.push_back(borrow(outs[i], "compressed_allreduce: out", DType::kFloat32,
                                states[i]->numel()));
          out_views.push_back(held.back().view);
        }
        held.push_back(borrow(workspace, "compressed_allreduce: workspace", DType::kUInt8));
        // The GIL stays held: a PythonCommunicator runs its collectives in Python.
        return compressed_allreduce(comm, x_views, states, out_views, held.back().view)
            .nonfinite;
      },
      py::arg("comm"), py::arg("xs"), py::arg("states"), py::arg("outs"), py::arg("workspace"),
      "Averages each x over ranks through 1-bit signs with worker and server error feedback "
      "(one alltoall + one allgather for the whole list); outs may alias xs. Returns the "
      "non-finite input elements this rank met (sent as 0).");
}

}  // namespace gradcomm::python
