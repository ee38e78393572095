// The Compressor interface as Python sees it. The DDP hooks in gradcomm.torch drive one
// compressor per parameter: wire() says which collective and how many elements, encode()
// fills this rank's payload, the hook moves the bytes through torch's process group, and
// decode() turns what every rank sent into the averaged update.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <vector>

#include "bindings.h"
#include "buffers.h"
#include "gradcomm/compressor.h"
#include "gradcomm/dense.h"
#include "gradcomm/quantize.h"

namespace py = pybind11;

namespace gradcomm::python {

void bind_compressors(py::module_& m) {
  py::class_<LayerWire>(m, "LayerWire", "What one layer puts on the wire this step.")
      .def_property_readonly("collective",
                             [](const LayerWire& w) { return collective_name(w.collective); })
      .def_property_readonly("dtype", [](const LayerWire& w) { return dtype_name(w.dtype); })
      .def_readonly("count", &LayerWire::count, "elements per rank")
      .def_property_readonly("nbytes", &LayerWire::bytes, "bytes per rank")
      .def("__repr__", [](const LayerWire& w) {
        return std::string("LayerWire(") +
               collective_name(w.collective) + ", " +
               dtype_name(w.dtype) + "[" + std::to_string(w.count) + "])";
      });

  py::class_<Compressor, std::shared_ptr<Compressor>>(m, "Compressor",
                         "A gradient compressor with per-layer state (see compressor.h).")
      .def_property_readonly("name", &Compressor::name)
      .def("setup",
           [](Compressor& c, std::vector<LayerSpec> layers, int world_size, int rank) {
             c.setup(layers, world_size, rank);
           },
           py::arg("layers"), py::arg("world_size"), py::arg("rank"))
      .def("settings_fingerprint", &Compressor::settings_fingerprint)
      .def("max_payload_bytes", &Compressor::max_payload_bytes, py::arg("layer"))
      .def("wire", &Compressor::wire, py::arg("layer"))
      .def(
          "encode",
          [](Compressor& c, std::size_t layer, py::handle grad, py::handle payload) {
            const Borrowed g = borrow(grad, "encode: grad", DType::kFloat32);
            const Borrowed p = borrow(payload, "encode: payload");
            py::gil_scoped_release release;  // pure kernels on raw buffers
            return c.encode(layer, g.view, p.view).nonfinite;
          },
          py::arg("layer"), py::arg("grad"), py::arg("payload"),
          "Compresses `grad` (float32, the layer's numel) into `payload` (wire(layer) bytes); "
          "returns how many non-finite elements it met (treated as 0).")
      .def(
          "decode",
          [](Compressor& c, std::size_t layer, py::handle received, py::handle out) {
            const Borrowed r = borrow(received, "decode: received");
            const Borrowed o = borrow(out, "decode: out", DType::kFloat32);
            py::gil_scoped_release release;
            c.decode(layer, r.view, o.view);
          },
          py::arg("layer"), py::arg("received"), py::arg("out"),
          "Writes the averaged update into `out` from the allreduced payload or from all "
          "ranks' payloads concatenated in rank order.")
      .def("set_step", &Compressor::set_step, py::arg("step"))
      .def("set_epoch", &Compressor::set_epoch, py::arg("epoch"))
      .def("save_state", [](const Compressor& c) { return blob_to_bytes(c.save_state()); })
      .def("load_state",
           [](Compressor& c, const py::bytes& blob) { c.load_state(bytes_as_blob(blob)); });

  m.def(
      "DenseCompressor",
      [](const std::string& wire_dtype) -> std::shared_ptr<Compressor> {
        return std::make_shared<DenseCompressor>(DenseOptions{parse_dtype(wire_dtype)});
      },
      py::arg("wire_dtype") = "float32",
      "No compression: an allreduce of the gradient (float32 or float16 on the wire), averaged.");

  const QuantizeOptions quantize;
  py::class_<QuantizeCompressor, Compressor, std::shared_ptr<QuantizeCompressor>>(
      m, "QuantizeCompressor",
      "Bucketed max-min k-bit quantization with error feedback (see gradcomm/quantize.h).")
      .def(py::init([](int bits, std::size_t bucket_size, const std::string& rounding,
                       bool error_feedback, std::uint64_t seed, bool quantize_1d) {
             QuantizeOptions o;
             o.bits = bits;
             o.bucket_size = bucket_size;
             o.rounding = parse_rounding(rounding);
             o.error_feedback = error_feedback;
             o.seed = seed;
             o.quantize_1d = quantize_1d;
             return std::make_shared<QuantizeCompressor>(o);
           }),
           py::arg("bits") = quantize.bits, py::arg("bucket_size") = quantize.bucket_size,
           py::arg("rounding") = "nearest", py::arg("error_feedback") = quantize.error_feedback,
           py::arg("seed") = quantize.seed, py::arg("quantize_1d") = quantize.quantize_1d)
      .def("is_quantized", &QuantizeCompressor::is_quantized, py::arg("layer"))
      .def("residual", [](py::object self, std::size_t layer) {
        return state_view(self.cast<QuantizeCompressor&>().residual(layer), self);
      }, py::arg("layer"), "What error feedback holds for `layer` (a read-only view).");
}

}  // namespace gradcomm::python
