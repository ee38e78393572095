// Tensors from Python as TensorViews, zero-copy, through the DLPack protocol.
//
// Every array library the hooks meet (torch >= 1.10, numpy >= 1.22, cupy) exports
// `__dlpack__()`, so the extension reads their buffers without linking any of them: one
// build serves every torch version. The capsule is borrowed, not consumed: the producer's
// capsule destructor releases the tensor when the last Python reference goes, so a
// Borrowed must outlive every use of its view (keep it on the C++ stack of the call).
#pragma once

#include <pybind11/pybind11.h>

#include <optional>

#include "gradcomm/tensor.h"

namespace gradcomm::python {

struct Borrowed {
  pybind11::object owner;  // the DLPack capsule that keeps the buffer alive
  TensorView view;
};

// Views `tensor` (anything with __dlpack__, or a "dltensor" capsule) as a flat buffer.
// Throws gradcomm::Error (kInvalidArgument) naming `what` when the buffer is not
// contiguous, has an unsupported dtype or device, or does not have `expected` dtype.
Borrowed borrow(pybind11::handle tensor, const char* what,
                std::optional<DType> expected = std::nullopt);

// The same, also checking the element count.
Borrowed borrow(pybind11::handle tensor, const char* what, DType expected, std::size_t numel);

}  // namespace gradcomm::python
