// Helpers for the multi-rank tests.
#pragma once

#include <gtest/gtest.h>
#include <mpi.h>

#include <cstring>
#include <vector>

namespace gradcomm::testing {

// True on every rank iff `bytes` is identical on every rank (compares against rank 0).
inline bool same_on_all_ranks(const void* data, std::size_t bytes, MPI_Comm comm = MPI_COMM_WORLD) {
  std::vector<unsigned char> root(bytes);
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  if (rank == 0 && bytes) std::memcpy(root.data(), data, bytes);
  MPI_Bcast(root.data(), static_cast<int>(bytes), MPI_BYTE, 0, comm);
  int local = (bytes == 0 || std::memcmp(root.data(), data, bytes) == 0) ? 1 : 0, global = 0;
  MPI_Allreduce(&local, &global, 1, MPI_INT, MPI_MIN, comm);
  return global == 1;
}

template <typename T>
bool same_on_all_ranks(const std::vector<T>& v, MPI_Comm comm = MPI_COMM_WORLD) {
  return same_on_all_ranks(v.data(), v.size() * sizeof(T), comm);
}

// True on every rank iff `ok` is true on every rank (so all ranks take the same branch).
inline bool all_ranks(bool ok, MPI_Comm comm = MPI_COMM_WORLD) {
  int local = ok ? 1 : 0, global = 0;
  MPI_Allreduce(&local, &global, 1, MPI_INT, MPI_MIN, comm);
  return global == 1;
}

inline int world_rank() { int r = 0; MPI_Comm_rank(MPI_COMM_WORLD, &r); return r; }
inline int world_size() { int s = 1; MPI_Comm_size(MPI_COMM_WORLD, &s); return s; }

}  // namespace gradcomm::testing
