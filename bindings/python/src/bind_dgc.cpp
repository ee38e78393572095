// DgcCompressor (include/gradcomm/dgc.h) for gradcomm.torch.DGCState.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <vector>

#include "bindings.h"
#include "gradcomm/dgc.h"
#include "buffers.h"

namespace py = pybind11;

namespace gradcomm::python {

void bind_dgc(py::module_& m) {
  const DgcOptions defaults;
  m.attr("DGC_PAPER_WARMUP") = py::tuple(py::cast(defaults.warmup_densities));
  py::class_<DgcCompressor, Compressor, std::shared_ptr<DgcCompressor>> dgc(
      m, "DgcCompressor",
      "Deep Gradient Compression with momentum correction, masking, warm-up and selection "
      "(see gradcomm/dgc.h for every option).");
  dgc.def(
      py::init([](double density, std::vector<double> warmup_densities, std::int64_t steps_per_epoch,
         float momentum, bool nesterov, bool momentum_masking, float clip_norm,
         const std::string& selection, double sample_fraction, std::uint64_t seed,
         const std::string& value_dtype, const std::string& dense_dtype,
         bool dense_fallback, double max_layer_density) {
        DgcOptions o;
        o.density = density;
        o.warmup_densities = std::move(warmup_densities);
        o.steps_per_epoch = steps_per_epoch;
        o.momentum = momentum;
        o.nesterov = nesterov;
        o.momentum_masking = momentum_masking;
        o.clip_norm = clip_norm;
        o.selection = parse_dgc_selection(selection);
        o.sample_fraction = sample_fraction;
        o.seed = seed;
        o.value_dtype = parse_dtype(value_dtype);
        o.dense_dtype = parse_dtype(dense_dtype);
        o.dense_fallback = dense_fallback;
        o.max_layer_density = max_layer_density;
        return std::make_shared<DgcCompressor>(std::move(o));
      }),
      py::arg("density") = defaults.density,
      py::arg("warmup_densities") = defaults.warmup_densities,
      py::arg("steps_per_epoch") = defaults.steps_per_epoch,
      py::arg("momentum") = defaults.momentum, py::arg("nesterov") = defaults.nesterov,
      py::arg("momentum_masking") = defaults.momentum_masking,
      py::arg("clip_norm") = defaults.clip_norm, py::arg("selection") = "sampled",
      py::arg("sample_fraction") = defaults.sample_fraction, py::arg("seed") = defaults.seed,
      py::arg("value_dtype") = "float32", py::arg("dense_dtype") = "float32",
      py::arg("dense_fallback") = defaults.dense_fallback,
      py::arg("max_layer_density") = defaults.max_layer_density);
  // DgcCompressor's state, for L-GreCo's DGC family (profiling reads u and v).
  dgc
      .def("momentum", [](py::object self, std::size_t layer) {
        return state_view(self.cast<DgcCompressor&>().momentum(layer), self);
      }, py::arg("layer"), "This rank's momentum u of `layer` (a read-only view).")
      .def("residual", [](py::object self, std::size_t layer) {
        return state_view(self.cast<DgcCompressor&>().residual(layer), self);
      }, py::arg("layer"), "This rank's velocity v of `layer`: what was not sent yet.")
      .def("k", &DgcCompressor::k, py::arg("layer"))
      .def("is_sparse", &DgcCompressor::is_sparse, py::arg("layer"))
      .def_property_readonly("density", &DgcCompressor::density)
      .def("set_layer_density", &DgcCompressor::set_layer_density, py::arg("layer"), py::arg("density"),
           "Layer `layer`'s density after warm-up (at most max_layer_density); u and v are kept.")
      .def("layer_density", &DgcCompressor::layer_density, py::arg("layer"))
      .def("payload_bytes_at", &DgcCompressor::payload_bytes_at, py::arg("layer"), py::arg("density"),
           "Payload bytes per rank of `layer` at `density` (no warm-up).");


}

}  // namespace gradcomm::python
