// Starting one collective of a step on a Communicator, whatever its kind: the Exchanger's
// requests and the phases of the blocking sparse_allreduce() go through here.
#pragma once

#include <cstddef>
#include <span>

#include "gradcomm/communicator.h"
#include "gradcomm/compressor.h"

namespace gradcomm::detail {

// kAllreduce sums; kAllgatherv takes its counts from recv_counts; kSparseAllreduce is not
// a single collective (kInternal).
WorkHandle start_collective(Communicator& comm, Collective collective, TensorView send, TensorView recv,
                            std::span<const std::size_t> send_counts, std::span<const std::size_t> recv_counts);

}  // namespace gradcomm::detail
