// Shared pieces of the extension module: each bind_*.cpp adds one concept to it.
#pragma once

#include <pybind11/pybind11.h>

#include <string>

#include "gradcomm/tensor.h"

namespace gradcomm::python {

void bind_core(pybind11::module_& m);         // errors, dtypes, LayerSpec, version
void bind_compressors(pybind11::module_& m);  // Compressor interface, DenseCompressor
void bind_dgc(pybind11::module_& m);          // DgcCompressor
void bind_onebit(pybind11::module_& m);       // compressed_allreduce, OneBitErrorState
void bind_lgreco(pybind11::module_& m);       // LgrecoCompressor, LgrecoKnapsack

// DType <-> the names numpy and torch use ("float32", ...).
DType parse_dtype(const std::string& name);

}  // namespace gradcomm::python
