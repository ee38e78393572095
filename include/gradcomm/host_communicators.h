// The communicators of a hierarchical exchange (docs/algorithms/sparse-allreduce.md,
// "Hierarchical"): the ranks of this rank's host, and one rank of each host (those with
// this rank's local index). Every host must hold the same number of ranks, in consecutive
// blocks or not: only the two groupings matter.
#pragma once

#include <memory>

#include "gradcomm/communicator.h"

namespace gradcomm {

struct HostCommunicators {
  Communicator* local = nullptr;  // this host's R ranks, ordered by world rank
  Communicator* cross = nullptr;  // the H ranks with this rank's local index, ordered by host
  bool given() const noexcept { return local != nullptr && cross != nullptr; }
};

}  // namespace gradcomm

#if defined(GRADCOMM_HAVE_MPI)
#include "gradcomm/mpi_communicator.h"

namespace gradcomm {

// The host communicators of an MPI world: hosts are MPI_COMM_TYPE_SHARED groups (the ranks
// sharing memory), or, with ranks_per_host > 0, blocks of that many consecutive ranks.
// Collective over `world`. Throws gradcomm::Error (kInvalidArgument) on every rank when the
// hosts hold different numbers of ranks.
class MpiHostCommunicators {
 public:
  explicit MpiHostCommunicators(const MpiCommunicator& world, int ranks_per_host = 0,
                                MpiCommunicatorOptions options = {});
  HostCommunicators get() noexcept { return {local_.get(), cross_.get()}; }
  MpiCommunicator& local() noexcept { return *local_; }
  MpiCommunicator& cross() noexcept { return *cross_; }

 private:
  std::unique_ptr<MpiCommunicator> local_, cross_;
};

}  // namespace gradcomm
#endif
