// A reduction step over whole buffers on the host: acc[i] = combine(acc[i], src[i]).
#pragma once

#include <cstddef>

#include "gradcomm/communicator.h"

namespace gradcomm::detail {

void combine_buffers(DType dtype, ReduceOp op, void* acc, const void* src, std::size_t n);

}  // namespace gradcomm::detail
