// MpiCommunicator::split and split_shared: hierarchies of ranks (the ranks of one host,
// the same local rank across hosts) as communicators of their own.
#include "comm/mpi/mpi_call.h"
#include "gradcomm/mpi_communicator.h"

namespace gradcomm {

std::unique_ptr<Communicator> MpiCommunicator::adopt(MPI_Comm part) {
  if (part == MPI_COMM_NULL) return nullptr;
  struct FreeOnExit {
    MPI_Comm& comm;
    ~FreeOnExit() { MPI_Comm_free(&comm); }
  } free_part{part};  // the new communicator keeps a duplicate of its own
  return std::make_unique<MpiCommunicator>(part, options_);
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) {
  GRADCOMM_CHECK_ARG(color >= 0 || color == kNoColor, "MpiCommunicator::split on rank ", rank_,
                     ": color ", color, " (a color is >= 0, or kNoColor)");
  MPI_Comm part = MPI_COMM_NULL;
  GRADCOMM_MPI_CALL(MPI_Comm_split(comm_, color == kNoColor ? MPI_UNDEFINED : color, key, &part),
                    "MPI_Comm_split (color ", color, ", key ", key, ") on rank ", rank_, " of ",
                    size_);
  return adopt(part);
}

std::unique_ptr<Communicator> MpiCommunicator::split_shared() {
  MPI_Comm part = MPI_COMM_NULL;
  GRADCOMM_MPI_CALL(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &part),
                    "MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) on rank ", rank_, " of ", size_);
  return adopt(part);
}

}  // namespace gradcomm
