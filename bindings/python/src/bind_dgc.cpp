// DgcCompressor (include/gradcomm/dgc.h) for gradcomm.torch.DGCState.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <vector>

#include "bindings.h"
#include "gradcomm/dgc.h"

namespace py = pybind11;

namespace gradcomm::python {

void bind_dgc(py::module_& m) {
  const DgcOptions defaults;
  m.attr("DGC_PAPER_WARMUP") = py::tuple(py::cast(defaults.warmup_densities));
  m.def(
      "DgcCompressor",
      [](double density, std::vector<double> warmup_densities, std::int64_t steps_per_epoch,
         float momentum, bool nesterov, bool momentum_masking, float clip_norm,
         const std::string& selection, double sample_fraction, std::uint64_t seed,
         const std::string& value_dtype, const std::string& dense_dtype,
         bool dense_fallback, double max_layer_density) -> std::unique_ptr<Compressor> {
        DgcOptions o;
        o.density = density;
        o.warmup_densities = std::move(warmup_densities);
        o.steps_per_epoch = steps_per_epoch;
        o.momentum = momentum;
        o.nesterov = nesterov;
        o.momentum_masking = momentum_masking;
        o.clip_norm = clip_norm;
        if (selection == "sampled") {
          o.selection = DgcSelection::kSampled;
        } else if (selection == "exact") {
          o.selection = DgcSelection::kExact;
        } else {
          GRADCOMM_THROW(ErrorCode::kInvalidArgument, "DgcCompressor: selection must be ",
                         "'sampled' or 'exact', got '", selection, "'");
        }
        o.sample_fraction = sample_fraction;
        o.seed = seed;
        o.value_dtype = parse_dtype(value_dtype);
        o.dense_dtype = parse_dtype(dense_dtype);
        o.dense_fallback = dense_fallback;
        o.max_layer_density = max_layer_density;
        return std::make_unique<DgcCompressor>(std::move(o));
      },
      py::arg("density") = defaults.density,
      py::arg("warmup_densities") = defaults.warmup_densities,
      py::arg("steps_per_epoch") = defaults.steps_per_epoch,
      py::arg("momentum") = defaults.momentum, py::arg("nesterov") = defaults.nesterov,
      py::arg("momentum_masking") = defaults.momentum_masking,
      py::arg("clip_norm") = defaults.clip_norm, py::arg("selection") = "sampled",
      py::arg("sample_fraction") = defaults.sample_fraction, py::arg("seed") = defaults.seed,
      py::arg("value_dtype") = "float32", py::arg("dense_dtype") = "float32",
      py::arg("dense_fallback") = defaults.dense_fallback,
      py::arg("max_layer_density") = defaults.max_layer_density,
      "Deep Gradient Compression with momentum correction, masking, warm-up and selection "
      "(see gradcomm/dgc.h for every option).");
}

}  // namespace gradcomm::python
