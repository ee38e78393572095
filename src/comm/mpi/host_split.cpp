// MpiHostCommunicators: the host-local and cross-host communicators of an MPI world.
#include "comm/mpi/mpi_call.h"
#include "gradcomm/error.h"
#include "gradcomm/host_communicators.h"

namespace gradcomm {

MpiHostCommunicators::MpiHostCommunicators(const MpiCommunicator& world, int ranks_per_host,
                                           MpiCommunicatorOptions options) {
  const int rank = world.rank(), size = world.size();
  // Decided on every rank from arguments every rank must pass alike; checked below.
  GRADCOMM_CHECK_ARG(ranks_per_host >= 0 && (ranks_per_host == 0 || size % ranks_per_host == 0),
                     "MpiHostCommunicators on rank ", rank, ": ranks_per_host ", ranks_per_host,
                     " does not divide the world of ", size);
  MPI_Comm local = MPI_COMM_NULL, cross = MPI_COMM_NULL;
  if (ranks_per_host > 0) {
    GRADCOMM_MPI_CALL(MPI_Comm_split(world.comm(), rank / ranks_per_host, rank, &local),
                      "MPI_Comm_split into hosts of ", ranks_per_host, " ranks on rank ", rank);
  } else {
    GRADCOMM_MPI_CALL(MPI_Comm_split_type(world.comm(), MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &local),
                      "MPI_Comm_split_type(shared) on rank ", rank);
  }
  int local_rank = 0, local_size = 1;
  MPI_Comm_rank(local, &local_rank);
  MPI_Comm_size(local, &local_size);
  int sizes[2] = {local_size, -local_size};
  GRADCOMM_MPI_CALL(MPI_Allreduce(MPI_IN_PLACE, sizes, 2, MPI_INT, MPI_MAX, world.comm()),
                    "MPI_Allreduce of the host sizes on rank ", rank);
  if (sizes[0] != -sizes[1]) {
    MPI_Comm_free(&local);
    GRADCOMM_THROW(ErrorCode::kInvalidArgument, "MpiHostCommunicators on rank ", rank, ": hosts hold ", -sizes[1],
                   " to ", sizes[0], " ranks; a hierarchical exchange needs the same number on every host");
  }
  GRADCOMM_MPI_CALL(MPI_Comm_split(world.comm(), local_rank, rank, &cross), "MPI_Comm_split across hosts on rank ",
                    rank);
  local_ = std::make_unique<MpiCommunicator>(local, options);  // each duplicates its communicator
  cross_ = std::make_unique<MpiCommunicator>(cross, options);
  MPI_Comm_free(&local);
  MPI_Comm_free(&cross);
}

}  // namespace gradcomm
