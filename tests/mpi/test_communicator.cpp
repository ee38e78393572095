// Every collective of MpiCommunicator on 2, 3 and 4 ranks: sizes 0, 1, odd, prime and
// large, every dtype it carries; results checked against values computed locally and
// bitwise identical on every rank.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdint>
#include <numeric>
#include <vector>

#include "core/float16.h"
#include "gradcomm/mpi_communicator.h"
#include "mpi/mpi_test_util.h"
#include "uneven_parts.h"

namespace gradcomm {
namespace {

using testing::all_ranks;
using testing::same_on_all_ranks;

const std::vector<std::size_t> kSizes = {0, 1, 7, 97, 1000, 1 << 20};

// A value every rank can recompute for any (rank, index): exact in fp16 and fp32.
float value_of(int rank, std::size_t i) {
  return static_cast<float>(static_cast<int>((i * 31 + static_cast<std::size_t>(rank) * 17) % 64) - 32) * 0.25f;
}

template <typename T>
TensorView view(std::vector<T>& v, DType dtype = dtype_of<T>()) {
  return TensorView(v.data(), v.size(), dtype);
}

TEST(MpiCommunicator, RankAndSize) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  EXPECT_EQ(comm.rank(), testing::world_rank());
  EXPECT_EQ(comm.size(), testing::world_size());
  EXPECT_NE(comm.describe().find("of " + std::to_string(comm.size())), std::string::npos);
}

TEST(MpiCommunicator, AllreduceFloatSumIsExactAndIdentical) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int p = comm.size();
  for (std::size_t n : kSizes) {
    std::vector<float> send(n), recv(n, -1.0f);
    for (std::size_t i = 0; i < n; ++i) send[i] = value_of(comm.rank(), i);
    comm.allreduce(view(send), view(recv), ReduceOp::kSum)->wait();
    bool ok = true;
    for (std::size_t i = 0; i < n && ok; ++i) {
      float expected = 0;
      for (int r = 0; r < p; ++r) expected += value_of(r, i);
      ok = recv[i] == expected;
      EXPECT_EQ(recv[i], expected) << "n=" << n << " i=" << i;
    }
    EXPECT_TRUE(same_on_all_ranks(recv)) << "n=" << n;
    // In place gives the same.
    comm.allreduce(view(send), view(send), ReduceOp::kSum)->wait();
    EXPECT_EQ(send, recv) << "in-place n=" << n;
  }
}

TEST(MpiCommunicator, AllreduceInexactSumIsBitwiseIdenticalOnAllRanks) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const std::size_t n = 100003;
  std::vector<float> data(n);
  for (std::size_t i = 0; i < n; ++i) data[i] = std::sin(static_cast<float>(i * (comm.rank() + 3))) * 1e-3f + 1.0f / (1 + i);
  comm.allreduce(view(data), view(data), ReduceOp::kSum)->wait();
  EXPECT_TRUE(same_on_all_ranks(data));
}

TEST(MpiCommunicator, AllreduceMaxMinAndIntegers) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int p = comm.size();
  for (std::size_t n : kSizes) {
    std::vector<std::int32_t> ints(n), sum(n), mx(n), mn(n);
    for (std::size_t i = 0; i < n; ++i) ints[i] = static_cast<std::int32_t>(i % 1000) * (comm.rank() + 1) - 5;
    comm.allreduce(view(ints), view(sum), ReduceOp::kSum)->wait();
    comm.allreduce(view(ints), view(mx), ReduceOp::kMax)->wait();
    comm.allreduce(view(ints), view(mn), ReduceOp::kMin)->wait();
    for (std::size_t i = 0; i < n; ++i) {
      const std::int32_t base = static_cast<std::int32_t>(i % 1000);
      ASSERT_EQ(sum[i], base * p * (p + 1) / 2 - 5 * p);
      ASSERT_EQ(mx[i], base * p - 5);
      ASSERT_EQ(mn[i], base - 5);
    }
    std::vector<std::uint32_t> u(n, static_cast<std::uint32_t>(comm.rank())), umax(n);
    comm.allreduce(view(u), view(umax), ReduceOp::kMax)->wait();
    for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(umax[i], static_cast<std::uint32_t>(p - 1));
  }
}

TEST(MpiCommunicator, AllreduceHalfAndBfloat) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int p = comm.size();
  for (std::size_t n : kSizes) {
    std::vector<std::uint16_t> half(n), bf(n), half_max(n);
    for (std::size_t i = 0; i < n; ++i) {
      half[i] = float_to_half(value_of(comm.rank(), i));
      bf[i] = static_cast<std::uint16_t>(std::bit_cast<std::uint32_t>(value_of(comm.rank(), i)) >> 16);
    }
    comm.allreduce(view(half, DType::kFloat16), view(half_max, DType::kFloat16), ReduceOp::kMax)->wait();
    comm.allreduce(view(half, DType::kFloat16), view(half, DType::kFloat16), ReduceOp::kSum)->wait();
    comm.allreduce(view(bf, DType::kBFloat16), view(bf, DType::kBFloat16), ReduceOp::kSum)->wait();
    for (std::size_t i = 0; i < n; ++i) {
      float expected = 0, largest = -1e9f;
      for (int r = 0; r < p; ++r) {
        expected += value_of(r, i);
        largest = std::max(largest, value_of(r, i));
      }
      ASSERT_EQ(half_to_float(half[i]), expected) << i;
      ASSERT_EQ(half_to_float(half_max[i]), largest) << i;
      ASSERT_EQ(std::bit_cast<float>(std::uint32_t{bf[i]} << 16), expected) << i;
    }
    EXPECT_TRUE(same_on_all_ranks(half));
  }
}

TEST(MpiCommunicator, AllgatherAndAllgatherv) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int p = comm.size();
  for (std::size_t n : kSizes) {
    if (n > 100000) continue;  // p * n per rank: keep the test light
    std::vector<float> send(n), recv(n * p);
    for (std::size_t i = 0; i < n; ++i) send[i] = value_of(comm.rank(), i);
    comm.allgather(view(send), view(recv))->wait();
    for (int r = 0; r < p; ++r)
      for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(recv[r * n + i], value_of(r, i));
    std::vector<std::uint8_t> bytes(n, static_cast<std::uint8_t>(comm.rank())), all(n * p);
    comm.allgather(view(bytes), view(all))->wait();
    for (int r = 0; r < p; ++r)
      for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(all[r * n + i], r);
  }
  // allgatherv: rank r sends r * 3 + (r == 1 ? 0 : 1) elements (one rank sends nothing).
  std::vector<std::size_t> counts(p);
  for (int r = 0; r < p; ++r) counts[r] = r == 1 ? 0 : static_cast<std::size_t>(r * 3 + 1);
  std::vector<std::int32_t> mine(counts[comm.rank()], comm.rank() * 100);
  std::vector<std::int32_t> gathered(std::accumulate(counts.begin(), counts.end(), std::size_t{0}));
  comm.allgatherv(view(mine), view(gathered), counts)->wait();
  std::size_t at = 0;
  for (int r = 0; r < p; ++r)
    for (std::size_t i = 0; i < counts[r]; ++i) ASSERT_EQ(gathered[at++], r * 100);
  EXPECT_TRUE(same_on_all_ranks(gathered));
}

TEST(MpiCommunicator, AlltoallBroadcastBarrier) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int p = comm.size();
  for (std::size_t chunk : {std::size_t{0}, std::size_t{1}, std::size_t{13}}) {
    std::vector<std::uint32_t> send(chunk * p), recv(chunk * p);
    for (int dst = 0; dst < p; ++dst)
      for (std::size_t i = 0; i < chunk; ++i) send[dst * chunk + i] = static_cast<std::uint32_t>(comm.rank() * 1000 + dst * 10 + i);
    comm.alltoall(view(send), view(recv))->wait();
    for (int src = 0; src < p; ++src)
      for (std::size_t i = 0; i < chunk; ++i)
        ASSERT_EQ(recv[src * chunk + i], static_cast<std::uint32_t>(src * 1000 + comm.rank() * 10 + i));
  }
  for (int root = 0; root < p; ++root) {
    std::vector<float> buffer(37, comm.rank() == root ? 2.5f * root : -1.0f);
    comm.broadcast(view(buffer), root)->wait();
    for (float x : buffer) ASSERT_EQ(x, 2.5f * root);
  }
  comm.barrier()->wait();
  auto work = comm.barrier();
  while (!work->test()) {
  }
}

TEST(MpiCommunicator, NonBlockingCollectivesOverlap) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  std::vector<float> a(5000, 1.0f), b(3000, 2.0f);
  auto wa = comm.allreduce(view(a), view(a), ReduceOp::kSum);
  auto wb = comm.allreduce(view(b), view(b), ReduceOp::kSum);
  wb->wait();
  wa->wait();
  EXPECT_EQ(a[4999], static_cast<float>(comm.size()));
  EXPECT_EQ(b[0], 2.0f * comm.size());
}

TEST(MpiCommunicator, TrafficFollowsTheAlgorithmModel) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int p = comm.size();
  std::vector<float> data(1000);
  comm.reset_traffic();
  comm.allreduce(view(data), view(data), ReduceOp::kSum)->wait();
  EXPECT_EQ(comm.traffic().bytes_sent, 2u * 4000u * (p - 1) / p);
  std::vector<float> all(1000 * p);
  comm.allgather(view(data), view(all))->wait();
  EXPECT_EQ(comm.traffic().bytes_sent, 2u * 4000u * (p - 1) / p + 4000u * (p - 1));
  EXPECT_EQ(comm.traffic().collectives, 2u);
}

// Uneven parts, an empty one among them (tests/uneven_parts.h).
TEST(MpiCommunicator, AlltoallvDeliversUnevenPartsInRankOrder) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  testing::UnevenParts parts(comm.rank(), comm.size());
  std::vector<std::int32_t> recv(parts.received(), -1);
  comm.reset_traffic();
  comm.alltoallv(view(parts.send), parts.send_counts, view(recv), parts.recv_counts)->wait();
  EXPECT_EQ(recv, parts.expected);
  EXPECT_EQ(comm.traffic().bytes_sent, parts.bytes_to_others);
  // Counts that do not add up to the buffers are refused before MPI sees them.
  std::vector<std::size_t> wrong = parts.send_counts;
  wrong[0] += 1;
  EXPECT_THROW(comm.alltoallv(view(parts.send), wrong, view(recv), parts.recv_counts), Error);
}

TEST(MpiCommunicator, LocalSizeErrorsAreCaughtBeforeMpi) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  std::vector<float> a(10), b(11);
  EXPECT_THROW(comm.allreduce(view(a), view(b), ReduceOp::kSum), Error);
  EXPECT_THROW(comm.allgather(view(a), view(b)), Error);
  EXPECT_THROW(comm.broadcast(view(a), comm.size()), Error);
  std::vector<float> odd(comm.size() * 2 + 1);
  if (comm.size() > 1) {
    EXPECT_THROW(comm.alltoall(view(odd), view(odd)), Error);
  }
}

TEST(MpiCommunicator, MismatchedSizesAcrossRanksFailOnEveryRank) {
  MpiCommunicator comm(MPI_COMM_WORLD, {.verify_sizes = true});
  if (comm.size() < 2) GTEST_SKIP() << "a disagreement needs two ranks";
  const std::size_t n = comm.rank() == comm.size() - 1 ? 11 : 10;  // the last rank disagrees
  std::vector<float> send(n, 1.0f), recv(n);
  bool threw = false;
  try {
    comm.allreduce(view(send), view(recv), ReduceOp::kSum)->wait();
  } catch (const Error& e) {
    threw = true;
    EXPECT_EQ(e.code(), ErrorCode::kSizeMismatch);
    EXPECT_NE(e.message().find("allreduce on rank " + std::to_string(comm.rank())), std::string::npos) << e.what();
    EXPECT_NE(e.message().find("between 10 and 11"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(all_ranks(threw));
  std::vector<float> gathered(n * comm.size());
  threw = false;
  try {
    comm.allgather(view(send), view(gathered))->wait();
  } catch (const Error& e) {
    threw = true;
  }
  EXPECT_TRUE(all_ranks(threw));
  // Agreeing sizes still work on the same communicator afterwards.
  std::vector<float> ok(4, 1.0f);
  comm.allreduce(view(ok), view(ok), ReduceOp::kSum)->wait();
  EXPECT_EQ(ok[0], static_cast<float>(comm.size()));
}

// The last rank is late to an allreduce: the others' watchdog names the collective and
// the ring neighbour each waits for (rank 0's left neighbour is the late rank), and the
// same work completes once the late rank comes.
TEST(MpiCommunicator, WatchdogNamesTheCollectiveAndTheRankWaitedFor) {
  MpiCommunicator comm(MPI_COMM_WORLD, {.collective_timeout = std::chrono::milliseconds(300)});
  const int p = comm.size(), me = comm.rank();
  if (p < 2) GTEST_SKIP() << "a late rank needs two";
  std::vector<float> data(1000, 1.0f);
  const TensorView view = TensorView::of(std::span<float>(data));
  if (me == p - 1) {
    MPI_Barrier(MPI_COMM_WORLD);  // after the others gave up once
    comm.allreduce(view, view, ReduceOp::kSum)->wait();
  } else {
    WorkHandle work = comm.allreduce(view, view, ReduceOp::kSum);
    try {
      work->wait();
      ADD_FAILURE() << "the watchdog did not fire";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kCommunication);
      EXPECT_NE(e.message().find("allreduce of 1000 elements on rank " + std::to_string(me) + " did not complete within"),
                std::string::npos) << e.what();
      EXPECT_NE(e.message().find("its left neighbour"), std::string::npos) << e.what();
      if (me == 0) {
        std::fprintf(stderr, "rank 0's watchdog: %s\n", e.what());
        EXPECT_NE(e.message().find("ring step 1 of " + std::to_string(2 * (p - 1)) + " from rank " + std::to_string(p - 1)),
                  std::string::npos) << e.what();
      }
    }
    MPI_Barrier(MPI_COMM_WORLD);
    work->wait();
  }
  EXPECT_EQ(data[999], static_cast<float>(p));
}

// CUDA buffers are staged when built with CUDA (tests/mpi/test_cuda_staging.cpp), and
// refused before MPI sees them otherwise.
TEST(MpiCommunicator, CudaBuffersOnlyWhenBuiltWithCuda) {
  MpiCommunicator comm(MPI_COMM_WORLD);
#if defined(GRADCOMM_HAVE_CUDA)
  EXPECT_TRUE(comm.accepts(Device::kCuda));
#else
  EXPECT_FALSE(comm.accepts(Device::kCuda));
  float x = 0;
  const TensorView on_cuda(&x, 1, DType::kFloat32, Device::kCuda);
  EXPECT_THROW(comm.allreduce(on_cuda, on_cuda, ReduceOp::kSum), Error);
  EXPECT_THROW(comm.broadcast(on_cuda, 0), Error);
  EXPECT_THROW(comm.set_cuda_stream(nullptr), Error);
#endif
  EXPECT_TRUE(comm.accepts(Device::kCpu));
}

TEST(MpiCommunicator, DuplicatesTheUsersCommunicator) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  int result = MPI_UNEQUAL;
  MPI_Comm_compare(comm.comm(), MPI_COMM_WORLD, &result);
  EXPECT_EQ(result, MPI_CONGRUENT);  // same group, different context: traffic never mixes
}

}  // namespace
}  // namespace gradcomm
