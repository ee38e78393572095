// gradcomm-netem-probe: prints, per rank, which ranks MPI considers to be on its node
// (MPI_Comm_split_type with MPI_COMM_TYPE_SHARED, the way a program finds its host-local
// peers) next to the network namespace and hostname the rank really runs in.
// bench/netem/selftest runs it under `bench/netem/run --hosts H --ranks-per-host R` to
// check that Open MPI's nodes are the emulated hosts: all namespaces share one kernel, so
// nothing but the launch decides what a "node" is.
#include <mpi.h>
#include <unistd.h>

#include <climits>
#include <cstdio>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int world_rank = 0, world_size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_rank, MPI_INFO_NULL, &node);
  int node_rank = 0, node_size = 0;
  MPI_Comm_rank(node, &node_rank);
  MPI_Comm_size(node, &node_size);
  // The lowest and highest world rank on this node: with by-slot placement a host holds a
  // consecutive range, so the pair names the node's members.
  int node_first = 0, node_last = 0;
  MPI_Allreduce(&world_rank, &node_first, 1, MPI_INT, MPI_MIN, node);
  MPI_Allreduce(&world_rank, &node_last, 1, MPI_INT, MPI_MAX, node);
  char hostname[256] = {};
  gethostname(hostname, sizeof hostname - 1);
  char netns[PATH_MAX] = {};
  if (readlink("/proc/self/ns/net", netns, sizeof netns - 1) < 0) std::snprintf(netns, sizeof netns, "unknown");
  std::printf("probe rank=%d size=%d node_rank=%d node_size=%d node_ranks=%d-%d host=%s netns=%s\n", world_rank,
              world_size, node_rank, node_size, node_first, node_last, hostname, netns);
  MPI_Comm_free(&node);
  MPI_Finalize();
  return 0;
}
