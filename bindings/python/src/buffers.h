// Tensors from Python as TensorViews, zero-copy, through the DLPack protocol.
//
// Every array library the hooks meet (torch >= 1.10, numpy >= 1.22, cupy) exports
// `__dlpack__()`, so the extension reads their buffers without linking any of them: one
// build serves every torch version. The capsule is borrowed, not consumed: the producer's
// capsule destructor releases the tensor when the last Python reference goes, so a
// Borrowed must outlive every use of its view (keep it on the C++ stack of the call).
#pragma once

#include <pybind11/pybind11.h>

#include <pybind11/numpy.h>

#include <optional>
#include <span>

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

// The other way: a DLPack capsule ("dltensor") over gradcomm's memory, which torch (and
// numpy, cupy) import without a copy. The capsule owns only its small descriptor: the
// memory must outlive every tensor made from it. uint32 is exported as int32 (torch has
// no uint32 before 2.3; moving or summing bits is the same); `as` overrides the dtype.
pybind11::capsule export_dlpack(TensorView view);
pybind11::capsule export_dlpack(void* data, std::size_t numel, std::uint8_t code,
                                std::uint8_t bits, Device device, int device_index);

// A read-only numpy view of compressor state; `owner` (the compressor) stays alive with it.
pybind11::array state_view(std::span<const float> values, pybind11::handle owner);

}  // namespace gradcomm::python
