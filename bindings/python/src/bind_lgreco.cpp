// L-GreCo's pieces (include/gradcomm/lgreco.h) for gradcomm.torch.LGreCoState: the
// quantization-family compressor that profiles itself, and the knapsack solver. The
// hook assembles the per-parameter tables, agrees on them over DDP's process group and
// hands them to the solver, so every rank reaches the same plan without a broadcast.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <vector>

#include "bindings.h"
#include "gradcomm/dgc.h"
#include "gradcomm/lgreco.h"
#include "gradcomm/quantize.h"

namespace py = pybind11;

namespace gradcomm::python {
namespace {

// A read-only numpy view of compressor state; `owner` (the compressor) stays alive with it.
py::array state_view(std::span<const float> values, py::handle owner) {
  py::array view(py::dtype::of<float>(), {static_cast<py::ssize_t>(values.size())},
                 {static_cast<py::ssize_t>(sizeof(float))}, values.data(), owner);
  py::detail::array_proxy(view.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return view;
}

}  // namespace

void bind_lgreco(py::module_& m) {
  // DgcCompressor's state, for L-GreCo's DGC family (profiling reads u and v).
  py::class_<DgcCompressor, Compressor>(m, "DgcCompressorState")
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

  const LgrecoOptions defaults;
  m.def(
      "LgrecoQuantCompressor",
      [](std::vector<int> bit_widths, int default_bits, std::int64_t period,
         std::int64_t first_step, int bins, std::size_t bucket_size,
         const std::string& rounding, std::uint64_t seed) {
        LgrecoOptions o;
        o.family = LgrecoFamily::kQuantBits;
        o.bit_widths = std::move(bit_widths);
        o.default_bits = default_bits;
        o.period = period;
        o.first_step = first_step;
        o.bins = bins;
        o.quantize.bucket_size = bucket_size;
        o.quantize.rounding = parse_rounding(rounding);
        o.quantize.seed = seed;
        return std::make_unique<LgrecoCompressor>(std::move(o));
      },
      py::arg("bit_widths") = defaults.bit_widths, py::arg("default_bits") = defaults.default_bits,
      py::arg("period") = defaults.period, py::arg("first_step") = defaults.first_step,
      py::arg("bins") = defaults.bins, py::arg("bucket_size") = defaults.quantize.bucket_size,
      py::arg("rounding") = "nearest", py::arg("seed") = defaults.quantize.seed,
      "k-bit quantization with per-layer bit widths that profiles its error every `period` "
      "steps (L-GreCo's quantization family).");

  py::class_<LgrecoCompressor, Compressor>(m, "LgrecoCompressor")
      .def_property_readonly("num_candidates", &LgrecoCompressor::num_candidates)
      .def("candidate_name", &LgrecoCompressor::candidate_name, py::arg("candidate"))
      .def("profiles_step", &LgrecoCompressor::profiles_step, py::arg("step"))
      .def("is_planned", &LgrecoCompressor::is_planned, py::arg("layer"))
      .def("table_ready", &LgrecoCompressor::table_ready)
      .def("consume_table", &LgrecoCompressor::consume_table)
      .def("local_table",
           [](const LgrecoCompressor& c) {
             const LgrecoTable& t = c.local_table();
             return py::make_tuple(t.bytes, t.error);
           },
           "(bytes, errors) of every (layer, candidate), row-major, from the last profile.")
      .def_property_readonly("default_choice",
                             [](const LgrecoCompressor& c) {
                               auto d = c.default_choice();
                               return std::vector<std::uint32_t>(d.begin(), d.end());
                             })
      .def_property_readonly("choice",
                             [](const LgrecoCompressor& c) {
                               auto d = c.choice();
                               return std::vector<std::uint32_t>(d.begin(), d.end());
                             })
      .def("apply_plan",
           [](LgrecoCompressor& c, const std::vector<std::uint32_t>& choice) { c.apply_plan(choice); },
           py::arg("choice"));

  py::class_<LgrecoKnapsack>(m, "LgrecoKnapsack",
                             "L-GreCo's multiple-choice knapsack (deterministic on every rank).")
      .def(py::init<>())
      .def(
          "solve",
          [](LgrecoKnapsack& k, std::size_t layers, std::size_t candidates,
             std::vector<std::uint64_t> bytes, std::vector<double> error,
             const std::vector<std::uint32_t>& default_choice, int bins) {
            GRADCOMM_CHECK(bytes.size() == layers * candidates && error.size() == bytes.size() &&
                               default_choice.size() == layers,
                           ErrorCode::kSizeMismatch, "LgrecoKnapsack.solve: ", layers, " x ",
                           candidates, " table with ", bytes.size(), " sizes, ", error.size(),
                           " errors, ", default_choice.size(), " defaults");
            LgrecoTable table(layers, candidates);
            table.bytes = std::move(bytes);
            table.error = std::move(error);
            const LgrecoPlan& plan = k.solve(table, default_choice, bins);
            py::dict out;
            out["choice"] = plan.choice;
            out["bytes"] = plan.bytes;
            out["error"] = plan.error;
            out["budget"] = plan.budget;
            out["fallback"] = plan.fallback;
            out["pinned"] = plan.pinned;
            return out;
          },
          py::arg("layers"), py::arg("candidates"), py::arg("bytes"), py::arg("error"),
          py::arg("default_choice"), py::arg("bins") = 10000,
          "Minimum total bytes with total (binned) error at most the default's.");
}

}  // namespace gradcomm::python
