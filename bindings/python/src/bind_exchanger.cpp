// Exchanger (include/gradcomm/exchanger.h) for the DDP hooks: the same step engine and
// wire format as a C++ trainer, driven over a gradcomm Communicator (a PythonCommunicator
// on torch.distributed inside the hooks). Python hands each parameter's gradient slice to
// submit() as backward produces it and calls finish_step() after the last one.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <vector>

#include "bindings.h"
#include "buffers.h"
#include "gradcomm/agreement.h"
#include "gradcomm/checkpoint.h"
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

// The registered layers as the "gradcomm.layers" section of a shard: one line per layer,
// "name<TAB>numel<TAB>dtype".
constexpr const char* kLayersSection = "gradcomm.layers";

std::string layer_table(std::span<const LayerSpec> layers) {
  std::string text;
  for (const LayerSpec& l : layers) {
    text += l.name + '\t' + std::to_string(l.numel) + '\t' + dtype_name(l.dtype) + '\n';
  }
  return text;
}

std::span<const std::byte> bytes_of(const std::string& text) {
  return {reinterpret_cast<const std::byte*>(text.data()), text.size()};
}

// A shard from Python bytes, checked against this rank, world and compressor.
CheckpointShard parse_shard(const py::bytes& shard, int rank, int world_size,
                            const std::string& compressor, const std::string& source) {
  const std::span<const std::byte> view = bytes_as_blob(shard);
  return CheckpointShard::parse(std::vector<std::byte>(view.begin(), view.end()),
                                ShardExpectation{rank, world_size, compressor}, source);
}

// The Exchanger's plan and sparse allreduce regions, as save_checkpoint names the section:
// a resumed reduce-scatter continues with the regions it stopped with.
constexpr const char* kExchangeSection = "gradcomm.exchange";

py::bytes shard_bytes(int rank, int world_size, std::int64_t step, const std::string& compressor,
                      std::span<const std::byte> state, const std::string& layers,
                      std::span<const std::byte> exchange_state = {}) {
  std::vector<CheckpointBlob> blobs{{kLayersSection, bytes_of(layers)}};
  if (!exchange_state.empty()) blobs.push_back({kExchangeSection, exchange_state});
  ShardContents contents;
  contents.rank = rank;
  contents.world_size = world_size;
  contents.step = step;
  contents.compressor = compressor;
  contents.compressor_state = state;
  contents.blobs = blobs;
  return blob_to_bytes(checkpoint_shard_bytes(contents));
}

// "name dtype[numel]" of a (name, numel, dtype) tuple, as errors name a layer.
std::string describe_layer(py::handle layer) {
  const auto t = layer.cast<py::tuple>();
  return t[0].cast<std::string>() + " " + t[2].cast<std::string>() + "[" +
         std::to_string(t[1].cast<std::uint64_t>()) + "]";
}

py::list layers_of_shard(const CheckpointShard& shard) {
  const std::span<const std::byte> table = shard.blob(kLayersSection);
  const std::string text(reinterpret_cast<const char*>(table.data()), table.size());
  py::list layers;
  std::size_t at = 0;
  while (at < text.size()) {
    const std::size_t end = text.find('\n', at);
    const std::size_t tab1 = text.find('\t', at), tab2 = text.find('\t', tab1 + 1);
    GRADCOMM_CHECK(end != std::string::npos && tab1 < end && tab2 < end, ErrorCode::kCorruptPayload,
                   "the shard's layer table is malformed at byte ", at);
    layers.append(py::make_tuple(text.substr(at, tab1 - at),
                                 std::stoull(text.substr(tab1 + 1, tab2 - tab1 - 1)),
                                 text.substr(tab2 + 1, end - tab2 - 1)));
    at = end + 1;
  }
  return layers;
}

// Throws, naming the first layer that differs, unless `here` (the model's layers, as
// (name, numel, dtype) tuples) are the layers the shard was saved with.
void check_layers(const py::list& saved, const py::list& here, const std::string& source) {
  for (std::size_t i = 0; i < std::max<std::size_t>(saved.size(), here.size()); ++i) {
    const std::string was = i < saved.size() ? describe_layer(saved[i]) : "(none)";
    const std::string now = i < here.size() ? describe_layer(here[i]) : "(none)";
    GRADCOMM_CHECK(was == now, ErrorCode::kInvalidArgument, source,
                   ": the shard is of another model (layer ", i, ": saved ", was, ", here ", now,
                   ")");
  }
}

}  // namespace

void bind_exchanger(py::module_& m) {
  m.def(
      "read_shard",
      [](const py::bytes& shard, int rank, int world_size, const std::string& compressor,
         const std::string& source, const std::optional<py::list>& layers) {
        const CheckpointShard parsed = parse_shard(shard, rank, world_size, compressor, source);
        if (layers) check_layers(layers_of_shard(parsed), *layers, source);
        py::dict out;
        out["step"] = parsed.step;
        out["layers"] = layers_of_shard(parsed);
        out["state"] = py::bytes(reinterpret_cast<const char*>(parsed.compressor_state().data()),
                                 parsed.compressor_state().size());
        return out;
      },
      py::arg("shard"), py::arg("rank"), py::arg("world_size"), py::arg("compressor"),
      py::arg("source") = "state_dict", py::arg("layers") = py::none(),
      "Checks a shard (checksums, rank, world size, compressor name and, when `layers` "
      "[(name, numel, dtype)] are given, its layers) and returns its step, layer table and "
      "state bytes.");
  m.def(
      "check_agreement",
      [](py::object communicator, const std::string& settings, const std::string& what) {
        Communicator& comm = communicator.cast<Communicator&>();
        py::gil_scoped_release release;
        check_agreement(comm, {}, settings, what);
      },
      py::arg("communicator"), py::arg("settings"), py::arg("what"),
      "Raises on every rank (naming the first differing key and both values) unless every "
      "rank passes the same `key=value ...` text: two small allreduces.");
  m.def(
      "write_shard",
      [](int rank, int world_size, std::int64_t step, const std::string& compressor,
         const py::bytes& state) {
        return shard_bytes(rank, world_size, step, compressor, bytes_as_blob(state), "");
      },
      py::arg("rank"), py::arg("world_size"), py::arg("step"), py::arg("compressor"),
      py::arg("state"),
      "A state blob wrapped as a checkpoint shard (checksummed header and payload).");
  const StepEngineOptions defaults;
  py::class_<PyExchanger>(
      m, "Exchanger",
      "gradcomm's step engine over a Communicator: registers the layers (checking that every "
      "rank registered the same layers and settings), then per step encodes each submitted "
      "gradient, starts each collective as soon as it is complete, and decodes the averaged "
      "update into the outputs at finish_step().")
      .def(py::init([](py::object communicator, std::shared_ptr<Compressor> compressor,
                       std::vector<LayerSpec> layers, std::size_t bucket_bytes,
                       const std::string& nonfinite, bool agree_every_step,
                       const std::string& exchange) {
             auto self = std::make_unique<PyExchanger>();
             auto& comm = communicator.cast<Communicator&>();
             self->communicator = std::move(communicator);
             GRADCOMM_CHECK_ARG(compressor != nullptr, "Exchanger: compressor is None");
             ExchangerOptions options;
             options.bucket_bytes = bucket_bytes;
             options.nonfinite = parse_nonfinite_policy(nonfinite);
             options.agree_every_step = agree_every_step;
             options.exchange = parse_exchange_choice(exchange);
             py::gil_scoped_release release;  // the setup agreement runs collectives
             self->exchanger = std::make_unique<Exchanger>(comm, std::move(compressor),
                                                           std::move(layers), options);
             return self;
           }),
           py::arg("communicator"), py::arg("compressor"), py::arg("layers"),
           py::arg("bucket_bytes") = defaults.bucket_bytes, py::arg("nonfinite") = "error",
           py::arg("agree_every_step") = defaults.agree_every_step,
           py::arg("exchange") = exchange_choice_name(defaults.exchange))
      .def("begin_step", [](PyExchanger& self) { self.get().begin_step(); })
      .def(
          "set_stream",
          [](PyExchanger& self, std::uintptr_t cuda_stream) {
            self.get().set_stream(reinterpret_cast<void*>(cuda_stream));
          },
          py::arg("cuda_stream"),
          "Layers on a CUDA device: the raw cudaStream_t (torch.cuda.Stream.cuda_stream) the "
          "next steps' kernels run on. Between steps only.")
      .def_property_readonly("device", [](PyExchanger& self) {
        return std::string(device_name(self.get().engine().device()));
      })
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
      .def(
          "save_shard",
          [](PyExchanger& self) {
            Exchanger& ex = self.get();
            const std::vector<std::byte> state = ex.compressor().save_state();
            const std::vector<std::byte> exchange = ex.save_exchange_state();
            return shard_bytes(ex.communicator().rank(), ex.communicator().size(), ex.step(),
                               ex.compressor().name(), state, layer_table(ex.layers()), exchange);
          },
          "This rank's state as a checkpoint shard (the C++ checkpoint format: checksummed "
          "header and payload, the step, the compressor state, the layer table, the exchange "
          "plan and sparse allreduce regions).")
      .def(
          "load_shard",
          [](PyExchanger& self, const py::bytes& shard, const std::string& source) {
            Exchanger& ex = self.get();
            const CheckpointShard parsed = parse_shard(shard, ex.communicator().rank(),
                                                       ex.communicator().size(),
                                                       ex.compressor().name(), source);
            py::list here;
            for (const LayerSpec& l : ex.layers()) {
              here.append(py::make_tuple(l.name, l.numel, dtype_name(l.dtype)));
            }
            check_layers(layers_of_shard(parsed), here, source);
            ex.compressor().load_state(parsed.compressor_state());
            ex.restore_step(parsed.step);
            // Shards written before the exchange state was saved have none: the plan stays as built.
            if (parsed.has(kExchangeSection)) ex.load_exchange_state(parsed.blob(kExchangeSection));
          },
          py::arg("shard"), py::arg("source") = "state_dict",
          "Validates a shard (checksums, rank, world size, compressor, layers) and restores the "
          "compressor state and the step from it.")
      .def_property_readonly(
          "plan",
          [](PyExchanger& self) {
            const ExchangePlan& plan = self.get().plan();
            return plan.exchange.empty() && !plan.hierarchical ? std::string() : plan.describe();
          },
          "The exchange plan (links measured, per layer the predicted times and the choice) as "
          "a table; empty with exchange 'compressor', where nothing is planned.")
      .def_property_readonly("exchanges", [](PyExchanger& self) {
            std::vector<std::string> names;
            for (SparseExchange e : self.get().plan().exchange) names.push_back(sparse_exchange_name(e));
            return names;
          },
          "Per layer the exchange the plan gives it (empty with exchange 'compressor').")
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
