// MpiCommunicator on CUDA buffers (staged through pinned host memory) on 2, 3 and 4 ranks:
// every collective gives bitwise what it gives on host buffers. Ranks may share a GPU
// (MPI does not mind). Labelled gpu: skips on every rank when any rank has no device.
#include <gtest/gtest.h>

#if defined(GRADCOMM_HAVE_CUDA)
#include <cuda_runtime.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "core/float16.h"
#include "gradcomm/mpi_communicator.h"
#include "mpi/cuda_buffers.h"
#include "mpi/mpi_test_util.h"

namespace gradcomm {
namespace {

class CudaStaging : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::all_ranks(testing::have_cuda_device()))
      GTEST_SKIP() << "no CUDA device on some rank";
    int count = 0;
    cudaGetDeviceCount(&count);
    mpi_ = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD);
    ASSERT_TRUE(mpi_->accepts(Device::kCuda));
    std::unique_ptr<Communicator> host = mpi_->split_shared();
    ASSERT_EQ(cudaSetDevice(host->rank() % count), cudaSuccess);
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), cudaSuccess);
    mpi_->set_cuda_stream(stream_);
  }
  void TearDown() override {
    if (stream_) cudaStreamDestroy(stream_);
  }
  template <typename T>
  TensorView on_device(const std::vector<T>& host, DType dtype = dtype_of<T>()) {
    return TensorView(buffers_.copy(host), host.size(), dtype, Device::kCuda);
  }
  template <typename T>
  std::vector<T> to_host(TensorView v) {
    return testing::DeviceBuffers::to_host(static_cast<const T*>(v.data()), v.numel());
  }
  std::unique_ptr<MpiCommunicator> mpi_;
  cudaStream_t stream_ = nullptr;
  testing::DeviceBuffers buffers_;
};

std::vector<float> inexact(int rank, std::size_t n) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i)
    v[i] = std::sin(static_cast<float>(i) * 0.37f + static_cast<float>(rank)) * 0.01f;
  return v;
}

TEST_F(CudaStaging, AllreduceMatchesTheHostPathBitwise) {
  const int me = mpi_->rank();
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{97}, std::size_t{1} << 20}) {
    std::vector<float> host = inexact(me, n), expected(n);
    mpi_->allreduce(TensorView::of(std::span<float>(host)),
                    TensorView::of(std::span<float>(expected)), ReduceOp::kSum)
        ->wait();
    const TensorView send = on_device(inexact(me, n));
    const TensorView recv = on_device(std::vector<float>(n, -1.0f));
    mpi_->allreduce(send, recv, ReduceOp::kSum)->wait();
    EXPECT_EQ(to_host<float>(recv), expected) << "n=" << n;
    WorkHandle in_place = mpi_->allreduce(send, send, ReduceOp::kSum);
    while (!in_place->test()) {
    }
    EXPECT_EQ(to_host<float>(send), expected) << "in place, n=" << n;
  }
  std::vector<std::uint16_t> half(1001);
  for (std::size_t i = 0; i < half.size(); ++i) half[i] = float_to_half(inexact(me, 1001)[i]);
  const TensorView d_half = on_device(half, DType::kFloat16);
  mpi_->allreduce(TensorView(half.data(), half.size(), DType::kFloat16),
                  TensorView(half.data(), half.size(), DType::kFloat16), ReduceOp::kMax)
      ->wait();
  mpi_->allreduce(d_half, d_half, ReduceOp::kMax)->wait();
  EXPECT_EQ(to_host<std::uint16_t>(d_half), half);
}

TEST_F(CudaStaging, GathersScattersAndBroadcast) {
  const int p = mpi_->size(), me = mpi_->rank();
  const TensorView mine = on_device(std::vector<std::int32_t>(5, me * 10));
  const TensorView all = on_device(std::vector<std::int32_t>(5 * p, -1));
  mpi_->allgather(mine, all)->wait();
  const auto gathered = to_host<std::int32_t>(all);
  for (int r = 0; r < p; ++r) EXPECT_EQ(gathered[5 * r + 4], r * 10);

  std::vector<std::size_t> counts(static_cast<std::size_t>(p));
  for (int r = 0; r < p; ++r) counts[r] = r == 1 ? 0 : static_cast<std::size_t>(r + 2);
  const std::size_t total = std::accumulate(counts.begin(), counts.end(), std::size_t{0});
  const TensorView part =
      on_device(std::vector<std::uint8_t>(counts[me], static_cast<std::uint8_t>(me + 1)));
  const TensorView parts = on_device(std::vector<std::uint8_t>(total, 0));
  mpi_->allgatherv(part, parts, counts)->wait();
  std::size_t at = 0;
  const auto got = to_host<std::uint8_t>(parts);
  for (int r = 0; r < p; ++r)
    for (std::size_t j = 0; j < counts[r]; ++j) EXPECT_EQ(got[at++], r + 1);

  std::vector<std::uint32_t> blocks(3 * static_cast<std::size_t>(p));
  for (int d = 0; d < p; ++d)
    for (int i = 0; i < 3; ++i)
      blocks[3 * d + i] = static_cast<std::uint32_t>(me * 100 + d * 10 + i);
  const TensorView a2a_send = on_device(blocks);
  const TensorView a2a_recv = on_device(std::vector<std::uint32_t>(blocks.size(), 0));
  mpi_->alltoall(a2a_send, a2a_recv)->wait();
  const auto a2a = to_host<std::uint32_t>(a2a_recv);
  for (int s = 0; s < p; ++s)
    for (int i = 0; i < 3; ++i)
      EXPECT_EQ(a2a[3 * s + i], static_cast<std::uint32_t>(s * 100 + me * 10 + i));

  std::vector<std::size_t> send_counts(static_cast<std::size_t>(p), 1),
      recv_counts(static_cast<std::size_t>(p), 1);
  const TensorView v_send =
      on_device(std::vector<float>(static_cast<std::size_t>(p), static_cast<float>(me)));
  const TensorView v_recv = on_device(std::vector<float>(static_cast<std::size_t>(p), -1.0f));
  mpi_->alltoallv(v_send, send_counts, v_recv, recv_counts)->wait();
  const auto v = to_host<float>(v_recv);
  for (int s = 0; s < p; ++s) EXPECT_EQ(v[s], static_cast<float>(s));

  const TensorView b = on_device(std::vector<float>(33, me == p - 1 ? 7.5f : 0.0f));
  mpi_->broadcast(b, p - 1)->wait();
  EXPECT_EQ(to_host<float>(b), std::vector<float>(33, 7.5f));
}

// The staging copies are ordered on the stream given: work queued there before the call
// (a memset here) is what the collective reads.
TEST_F(CudaStaging, CopiesFollowTheCallersStream) {
  const std::size_t n = std::size_t{1} << 22;
  const TensorView x = on_device(std::vector<std::uint8_t>(n, 0));
  ASSERT_EQ(cudaMemsetAsync(x.data(), 1, n, stream_), cudaSuccess);  // not yet done, maybe
  mpi_->allreduce(x, x, ReduceOp::kSum)->wait();
  const auto got = to_host<std::uint8_t>(x);
  EXPECT_EQ(got[0], mpi_->size());
  EXPECT_EQ(got[n - 1], mpi_->size());
}

}  // namespace
}  // namespace gradcomm

#else
TEST(CudaStaging, NotBuilt) { GTEST_SKIP() << "built without CUDA"; }
#endif
