// Which CUDA device a rank uses on a host with several: its local rank among the ranks
// of its host, as the launcher says (Open MPI's mpirun, torchrun).
#pragma once

#include <string>

namespace gradcomm {

struct LocalRank {
  int rank = 0;        // among the ranks of this host
  int size = 0;        // ranks on this host; 0 when the launcher does not say
  std::string source;  // the variable it came from, or "none" (rank 0)
};

// OMPI_COMM_WORLD_LOCAL_RANK (and _LOCAL_SIZE), else LOCAL_RANK (and LOCAL_WORLD_SIZE);
// neither: rank 0, source "none". A value that is not a number >= 0 is kInvalidArgument
// naming the variable.
LocalRank local_rank_from_environment();

struct LocalDevice {
  int device = 0;        // the CUDA device this rank uses
  int device_count = 0;  // CUDA devices visible to this process
  LocalRank local;
  // "cuda:1 (local rank 1 of 4, from OMPI_COMM_WORLD_LOCAL_RANK; 4 devices)", and a note
  // when more local ranks than devices share them (NCCL refuses that).
  std::string describe() const;
};

// device = local rank % device count, and made the calling thread's current device
// (cudaSetDevice). kCuda when no device is visible; kUnsupported when gradcomm was built
// without CUDA. Binaries print describe() once, so each rank says which device it took.
LocalDevice local_cuda_device();

}  // namespace gradcomm
