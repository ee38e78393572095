// MpiCommunicator::split and split_shared on 2, 3 and 4 ranks, and (CTest
// mpi.split.netem_2x2) on 2 emulated hosts of 2 ranks (bench/netem/run), where the ranks
// of a host must be exactly those that share its hostname.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gradcomm/mpi_communicator.h"
#include "mpi/mpi_test_util.h"

namespace gradcomm {
namespace {

using testing::world_rank;
using testing::world_size;

MpiCommunicator& as_mpi(Communicator& comm) { return dynamic_cast<MpiCommunicator&>(comm); }

// The world ranks of `part`'s members, in `part`'s rank order.
std::vector<int> members(MpiCommunicator& part) {
  int me = world_rank();
  std::vector<int> all(static_cast<std::size_t>(part.size()));
  part.allgather(TensorView(&me, 1, DType::kInt32),
                 TensorView(all.data(), all.size(), DType::kInt32))
      ->wait();
  return all;
}

// The world ranks whose hostname is this rank's, ascending.
std::vector<int> ranks_on_my_host() {
  char name[256] = {};
  gethostname(name, sizeof name - 1);
  std::vector<char> all(256 * static_cast<std::size_t>(world_size()));
  MPI_Allgather(name, 256, MPI_CHAR, all.data(), 256, MPI_CHAR, MPI_COMM_WORLD);
  std::vector<int> same;
  for (int r = 0; r < world_size(); ++r) {
    if (std::strncmp(all.data() + 256 * r, name, 256) == 0) same.push_back(r);
  }
  return same;
}

TEST(MpiSplit, SharedGroupsTheRanksOfThisHost) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  std::unique_ptr<Communicator> host = comm.split_shared();
  ASSERT_NE(host, nullptr);
  EXPECT_EQ(members(as_mpi(*host)), ranks_on_my_host());
  // Open MPI's own view of the node agrees.
  if (const char* local_rank = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK")) {
    EXPECT_EQ(host->rank(), std::atoi(local_rank));
    EXPECT_EQ(host->size(), std::atoi(std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")));
  }
  // Under bench/netem/run --hosts H --ranks-per-host R: R ranks per host, filled in order.
  if (const char* link = std::getenv("GRADCOMM_NETEM_LINK")) {
    const char* per_host = std::strstr(link, "ranks_per_host=");
    ASSERT_NE(per_host, nullptr) << link;
    const int r = std::atoi(per_host + std::strlen("ranks_per_host="));
    EXPECT_EQ(host->size(), r) << link;
    EXPECT_EQ(host->rank(), world_rank() % r) << link;
    EXPECT_LT(host->size(), world_size()) << "an emulated cluster must have more than one host";
  }
  float x = static_cast<float>(world_rank() + 1), sum = 0;
  host->allreduce(TensorView(&x, 1, DType::kFloat32), TensorView(&sum, 1, DType::kFloat32),
                  ReduceOp::kSum)
      ->wait();
  float expected = 0;
  for (int r : ranks_on_my_host()) expected += static_cast<float>(r + 1);
  EXPECT_EQ(sum, expected);
  EXPECT_EQ(host->describe(), "MpiCommunicator(rank " + std::to_string(host->rank()) + " of " +
                                  std::to_string(host->size()) + ")");
}

// The ranks with the same local rank across hosts: one per host, in host order.
TEST(MpiSplit, SameLocalRankAcrossHosts) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  std::unique_ptr<Communicator> host = comm.split_shared();
  std::unique_ptr<Communicator> cross = comm.split(host->rank(), comm.rank());
  ASSERT_NE(cross, nullptr);
  const std::vector<int> across = members(as_mpi(*cross));
  for (std::size_t i = 1; i < across.size(); ++i) EXPECT_LT(across[i - 1], across[i]);
  int hosts = host->rank() == 0 ? 1 : 0, total = 0;
  MPI_Allreduce(&hosts, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (host->rank() == 0) {
    EXPECT_EQ(cross->size(), total);  // local rank 0 exists on every host
  }
  EXPECT_EQ(cross->split_shared()->size(), 1)
      << "each member of the cross-host group is on another host";
}

TEST(MpiSplit, ColorsKeysAndNoColor) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int me = comm.rank(), p = comm.size();
  // Rank 0 joins none; the others by parity, ranked by descending rank.
  std::unique_ptr<Communicator> part = comm.split(me == 0 ? Communicator::kNoColor : me % 2, -me);
  if (me == 0) {
    EXPECT_EQ(part, nullptr);
  } else {
    ASSERT_NE(part, nullptr);
    std::vector<int> expected;
    for (int r = p - 1; r >= 1; --r) {
      if (r % 2 == me % 2) expected.push_back(r);
    }
    EXPECT_EQ(members(as_mpi(*part)), expected);
    // Traffic is the new communicator's own.
    part->reset_traffic();
    std::vector<float> data(100, 1.0f);
    part->allreduce(TensorView::of(std::span<float>(data)), TensorView::of(std::span<float>(data)),
                    ReduceOp::kSum)
        ->wait();
    EXPECT_EQ(data[99], static_cast<float>(expected.size()));
    EXPECT_EQ(part->traffic().collectives, 1u);
  }
  EXPECT_EQ(comm.traffic().collectives, 0u);
  EXPECT_THROW(comm.split(-5, 0), Error);
  // The parent still works, and outlives nothing: a split made while a collective of the
  // parent is in flight.
  std::vector<float> big(10000, 1.0f);
  WorkHandle pending = comm.allreduce(TensorView::of(std::span<float>(big)),
                                      TensorView::of(std::span<float>(big)), ReduceOp::kSum);
  std::unique_ptr<Communicator> all = comm.split(0, 0);
  pending->wait();
  EXPECT_EQ(big[0], static_cast<float>(p));
  EXPECT_EQ(all->size(), p);
}

TEST(MpiSplit, OutlivesItsParent) {
  std::unique_ptr<Communicator> half;
  {
    MpiCommunicator comm(MPI_COMM_WORLD);
    half = comm.split(comm.rank() % 2, 0);
  }
  int one = 1, count = 0;
  half->allreduce(TensorView(&one, 1, DType::kInt32), TensorView(&count, 1, DType::kInt32),
                  ReduceOp::kSum)
      ->wait();
  EXPECT_EQ(count, half->size());
}

}  // namespace
}  // namespace gradcomm
