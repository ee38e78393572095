// Exchanger (include/gradcomm/exchanger.h) for the DDP hooks: the same step engine and
// wire format as a C++ trainer, driven over a gradcomm Communicator (a PythonCommunicator
// on torch.distributed inside the hooks). Python hands each parameter's gradient slice to
// submit() as backward produces it and calls finish_step() after the last one.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <vector>

#include "bindings.h"
#include "buffers.h"
#include "gradcomm/agreement.h"
#include "gradcomm/exchanger.h"

namespace py = pybind11;

namespace gradcomm::python {
namespace {

// The Exchanger with what keeps its Python-owned pieces alive: the communicator object,
// and this step's gradient and output buffers until finish_step() has written them.
struct PyExchanger {
  py::object communicator;
  std::unique_ptr<Exchanger> exchanger;
  std::vector<Borrowed> held;

  Exchanger& get() {
    GRADCOMM_CHECK(exchanger != nullptr, ErrorCode::kInvalidArgument, "Exchanger: closed");
    return *exchanger;
  }
};

py::dict stats_dict(const StepStats& s) {
  py::dict d;
  d["wire_bytes"] = s.wire_bytes;
  d["payload_bytes"] = s.payload_bytes;
  d["collectives"] = s.collectives;
  d["nonfinite_layers"] = s.nonfinite;
  d["skipped"] = s.skipped;
  return d;
}

}  // namespace

void bind_exchanger(py::module_& m) {
  const StepEngineOptions defaults;
  py::class_<PyExchanger>(
      m, "Exchanger",
      "gradcomm's step engine over a Communicator: registers the layers (checking that every "
      "rank registered the same layers and settings), then per step encodes each submitted "
      "gradient, starts each collective as soon as it is complete, and decodes the averaged "
      "update into the outputs at finish_step().")
      .def(py::init([](py::object communicator, std::shared_ptr<Compressor> compressor,
                       std::vector<LayerSpec> layers, std::size_t bucket_bytes,
                       const std::string& nonfinite) {
             auto self = std::make_unique<PyExchanger>();
             auto& comm = communicator.cast<Communicator&>();
             self->communicator = std::move(communicator);
             GRADCOMM_CHECK_ARG(compressor != nullptr, "Exchanger: compressor is None");
             ExchangerOptions options;
             options.bucket_bytes = bucket_bytes;
             options.nonfinite = parse_nonfinite_policy(nonfinite);
             py::gil_scoped_release release;  // the setup agreement runs collectives
             self->exchanger = std::make_unique<Exchanger>(comm, std::move(compressor),
                                                           std::move(layers), options);
             return self;
           }),
           py::arg("communicator"), py::arg("compressor"), py::arg("layers"),
           py::arg("bucket_bytes") = defaults.bucket_bytes, py::arg("nonfinite") = "error")
      .def("begin_step", [](PyExchanger& self) { self.get().begin_step(); })
      .def(
          "check_agreement",
          [](PyExchanger& self, const std::string& settings, const std::string& what) {
            Exchanger& ex = self.get();
            py::gil_scoped_release release;
            check_agreement(ex.communicator(), {}, settings, what);
          },
          py::arg("settings"), py::arg("what"),
          "Raises on every rank (naming the first differing key and both values) unless every "
          "rank passes the same `key=value ...` text: two small allreduces.")
      .def(
          "submit",
          [](PyExchanger& self, std::size_t layer, py::handle grad, py::handle out) {
            Exchanger& ex = self.get();
            self.held.push_back(borrow(grad, "Exchanger.submit: grad"));
            const TensorView g = self.held.back().view;
            self.held.push_back(borrow(out, "Exchanger.submit: out"));
            const TensorView o = self.held.back().view;
            py::gil_scoped_release release;
            ex.submit(layer, g, o);
          },
          py::arg("layer"), py::arg("grad"), py::arg("out"),
          "Encodes `grad` (the layer's gradient) and starts every collective that became "
          "complete. `out` (may be `grad`) receives the averaged update at finish_step().")
      .def(
          "finish_step",
          [](PyExchanger& self) {
            Exchanger& ex = self.get();
            struct Release {  // the buffers go whatever finish_step() does
              PyExchanger& self;
              ~Release() { self.held.clear(); }
            } release_buffers{self};
            StepStats stats;
            {
              py::gil_scoped_release release;
              stats = ex.finish_step();
            }
            return stats_dict(stats);
          },
          "Waits for the step's collectives, decodes every layer's update into its output "
          "and applies the non-finite policy; returns the step's stats.")
      .def_property_readonly("step", [](PyExchanger& self) { return self.get().step(); })
      .def("restore_step", [](PyExchanger& self, std::int64_t step) { self.get().restore_step(step); },
           py::arg("step"))
      .def_property_readonly("in_step",
                             [](PyExchanger& self) { return self.get().engine().in_step(); })
      .def_property_readonly("compressor", [](PyExchanger& self) {
        return self.get().engine().compressor_ptr();
      })
      .def_property_readonly("communicator", [](PyExchanger& self) { return self.communicator; })
      .def_property_readonly("settings_fingerprint",
                             [](PyExchanger& self) { return self.get().engine().settings_fingerprint(); })
      .def_property_readonly("layers", [](PyExchanger& self) {
        const auto layers = self.get().layers();
        return std::vector<LayerSpec>(layers.begin(), layers.end());
      });
}

}  // namespace gradcomm::python
