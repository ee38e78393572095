// Shared pieces of the extension module: each bind_*.cpp adds one concept to it.
#pragma once

#include <pybind11/pybind11.h>

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gradcomm/tensor.h"

namespace gradcomm::python {

void bind_core(pybind11::module_& m);         // errors, dtypes, LayerSpec, version
void bind_compressors(pybind11::module_& m);  // Compressor interface, DenseCompressor
void bind_dgc(pybind11::module_& m);          // DgcCompressor
void bind_onebit(pybind11::module_& m);       // compressed_allreduce, OneBitErrorState
void bind_lgreco(pybind11::module_& m);       // LgrecoCompressor, LgrecoKnapsack
void bind_mpi(pybind11::module_& m);          // MpiCommunicator (MPI builds), HAVE_MPI
void bind_exchanger(pybind11::module_& m);    // Exchanger: the step engine over a Communicator

// DType <-> the names numpy and torch use ("float32", ...).
DType parse_dtype(const std::string& name);

// State blobs (save_state / load_state) as Python bytes, and back. The span views the
// bytes object's buffer: use it while `blob` is alive.
inline pybind11::bytes blob_to_bytes(const std::vector<std::byte>& blob) {
  return pybind11::bytes(reinterpret_cast<const char*>(blob.data()), blob.size());
}
inline std::span<const std::byte> bytes_as_blob(const pybind11::bytes& blob) {
  const std::string_view view = blob;
  return {reinterpret_cast<const std::byte*>(view.data()), view.size()};
}

}  // namespace gradcomm::python
