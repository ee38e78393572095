#include "exchange/start_collective.h"

#include "gradcomm/error.h"

namespace gradcomm::detail {

WorkHandle start_collective(Communicator& comm, Collective collective, TensorView send, TensorView recv,
                            std::span<const std::size_t> send_counts, std::span<const std::size_t> recv_counts) {
  switch (collective) {
    case Collective::kAllreduce: return comm.allreduce(send, recv, ReduceOp::kSum);
    case Collective::kAllgather: return comm.allgather(send, recv);
    case Collective::kAllgatherv: return comm.allgatherv(send, recv, recv_counts);
    case Collective::kAlltoall: return comm.alltoall(send, recv);
    case Collective::kAlltoallv: return comm.alltoallv(send, send_counts, recv, recv_counts);
    case Collective::kSparseAllreduce: break;
  }
  GRADCOMM_THROW(ErrorCode::kInternal, "start_collective on rank ", comm.rank(), ": ", collective_name(collective),
                 " is not one collective");
}

}  // namespace gradcomm::detail
