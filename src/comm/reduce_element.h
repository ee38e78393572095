// The element-wise combine of the reductions gradcomm's communicators compute themselves:
// MPI's float16/bfloat16 user operations and ThreadCommunicator's rank-order reduction,
// on the CPU and in its CUDA kernel. One definition, so every path rounds alike: a
// 16-bit pair is widened to float32, combined, and rounded back at every step.
#pragma once

#include <cstdint>

#include "core/float16.h"
#include "core/host_device.h"
#include "gradcomm/communicator.h"

namespace gradcomm::detail {

// max/min as std::max(a, b)/std::min(a, b): `a` when the two compare equal or unordered.
GRADCOMM_HOST_DEVICE inline float combine_float(float a, float b, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return a + b;
    case ReduceOp::kMax:
      return a < b ? b : a;
    case ReduceOp::kMin:
      return b < a ? b : a;
  }
  return a;
}

GRADCOMM_HOST_DEVICE inline std::uint16_t combine_half(std::uint16_t a, std::uint16_t b,
                                                       ReduceOp op) {
  return float_to_half(combine_float(half_to_float(a), half_to_float(b), op));
}

GRADCOMM_HOST_DEVICE inline std::uint16_t combine_bfloat16(std::uint16_t a, std::uint16_t b,
                                                           ReduceOp op) {
  return float_to_bfloat16(combine_float(bfloat16_to_float(a), bfloat16_to_float(b), op));
}

// Integer sums wrap (as MPI's and NCCL's do in practice) instead of overflowing into
// undefined behaviour.
template <typename T, typename Unsigned>
GRADCOMM_HOST_DEVICE inline T combine_integer(T a, T b, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return static_cast<T>(static_cast<Unsigned>(a) + static_cast<Unsigned>(b));
    case ReduceOp::kMax:
      return a < b ? b : a;
    case ReduceOp::kMin:
      return b < a ? b : a;
  }
  return a;
}

}  // namespace gradcomm::detail
