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

py::dict plan_dict(const LgrecoPlan& plan) {
  py::dict out;
  out["choice"] = plan.choice;
  out["bytes"] = plan.bytes;
  out["error"] = plan.error;
  out["budget"] = plan.budget;
  out["fallback"] = plan.fallback;
  out["pinned"] = plan.pinned;
  return out;
}

}  // namespace

void bind_lgreco(py::module_& m) {
  const LgrecoOptions defaults;
  py::class_<LgrecoCompressor, Compressor, std::shared_ptr<LgrecoCompressor>> lgreco(
      m, "LgrecoCompressor",
      "L-GreCo: the quantizer (family 'quant': per-layer bit widths) or DGC (family 'dgc': "
      "per-layer densities, no warm-up), profiling its own error every `period` steps; pair "
      "it with an LgrecoPlanner (see gradcomm/lgreco.h).");
  lgreco.def(
      py::init([](const std::string& family, std::vector<int> bit_widths, int default_bits,
         std::vector<double> densities, double default_density, std::int64_t period,
         std::int64_t first_step, int bins, bool adaptive, std::size_t bucket_size,
         const std::string& rounding, std::uint64_t seed, float momentum, bool nesterov,
         const std::string& selection, const std::string& value_dtype) {
        LgrecoOptions o;
        o.family = parse_lgreco_family(family);
        o.bit_widths = std::move(bit_widths);
        o.default_bits = default_bits;
        o.densities = std::move(densities);
        o.default_density = default_density;
        o.period = period;
        o.first_step = first_step;
        o.bins = bins;
        o.adaptive = adaptive;
        o.quantize.bucket_size = bucket_size;
        o.quantize.rounding = parse_rounding(rounding);
        o.quantize.seed = seed;
        o.dgc.warmup_densities.clear();  // planned densities from the first step
        o.dgc.momentum = momentum;
        o.dgc.nesterov = nesterov;
        o.dgc.selection = parse_dgc_selection(selection);
        o.dgc.seed = seed;
        o.dgc.value_dtype = parse_dtype(value_dtype);
        o.dgc.dense_dtype = o.dgc.value_dtype;
        return std::make_shared<LgrecoCompressor>(std::move(o));
      }),
      py::arg("family") = "quant", py::arg("bit_widths") = defaults.bit_widths,
      py::arg("default_bits") = defaults.default_bits, py::arg("densities") = defaults.densities,
      py::arg("default_density") = defaults.default_density, py::arg("period") = defaults.period,
      py::arg("first_step") = defaults.first_step, py::arg("bins") = defaults.bins,
      py::arg("adaptive") = defaults.adaptive,
      py::arg("bucket_size") = defaults.quantize.bucket_size, py::arg("rounding") = "nearest",
      py::arg("seed") = defaults.quantize.seed, py::arg("momentum") = defaults.dgc.momentum,
      py::arg("nesterov") = defaults.dgc.nesterov, py::arg("selection") = "sampled",
      py::arg("value_dtype") = "float32");
  lgreco
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

  py::class_<LgrecoPlanner>(m, "LgrecoPlanner",
                            "Agrees on the L-GreCo error table (one allreduce over the "
                            "communicator) and solves the knapsack, identically on every rank.")
      .def(py::init([](py::object communicator, std::shared_ptr<LgrecoCompressor> compressor) {
             return std::make_unique<LgrecoPlanner>(communicator.cast<Communicator&>(), *compressor);
           }),
           py::arg("communicator"), py::arg("compressor"), py::keep_alive<1, 2>(),
           py::keep_alive<1, 3>())
      .def("after_step",
           [](LgrecoPlanner& p) {
             py::gil_scoped_release release;  // the table allreduce may be a Python collective
             return p.after_step();
           },
           "Call on every rank after every step: on profiling steps it agrees on the table, "
           "solves it and applies the plan from the next step; returns whether it re-planned.")
      .def_property_readonly("plan", [](const LgrecoPlanner& p) { return plan_dict(p.plan()); })
      .def_property_readonly("replans", [](const LgrecoPlanner& p) { return p.stats().replans; })
      .def_property_readonly("changed_layers",
                             [](const LgrecoPlanner& p) { return p.stats().changed_layers; });

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
            return plan_dict(k.solve(table, default_choice, bins));
          },
          py::arg("layers"), py::arg("candidates"), py::arg("bytes"), py::arg("error"),
          py::arg("default_choice"), py::arg("bins") = 10000,
          "Minimum total bytes with total (binned) error at most the default's.");
}

}  // namespace gradcomm::python
