// NcclCommunicator on 2, 3 and 4 ranks, bootstrapped over MPI. Labelled gpu: needs one
// CUDA device per rank (ranks share a device when there are fewer), and skips on every
// rank when any rank has none.
#include <gtest/gtest.h>

#if defined(GRADCOMM_HAVE_NCCL)
#include <cuda_runtime.h>

#include <vector>

#include "gradcomm/mpi_communicator.h"
#include "gradcomm/nccl_communicator.h"
#include "mpi/mpi_test_util.h"

namespace gradcomm {
namespace {

bool have_device() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

class NcclTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::all_ranks(have_device())) GTEST_SKIP() << "no CUDA device on some rank";
    int count = 0;
    cudaGetDeviceCount(&count);
    cudaSetDevice(testing::world_rank() % count);
    mpi_ = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD);
    nccl_ = std::make_unique<NcclCommunicator>(*mpi_);
  }
  template <typename T>
  T* device_copy(const std::vector<T>& host) {
    T* ptr = nullptr;
    EXPECT_EQ(cudaMalloc(&ptr, std::max<std::size_t>(1, host.size()) * sizeof(T)), cudaSuccess);
    cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
    buffers_.push_back(ptr);
    return ptr;
  }
  template <typename T>
  std::vector<T> host_copy(const T* ptr, std::size_t n) {
    std::vector<T> host(n);
    cudaMemcpy(host.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost);
    return host;
  }
  void TearDown() override {
    for (void* p : buffers_) cudaFree(p);
  }
  std::unique_ptr<MpiCommunicator> mpi_;
  std::unique_ptr<NcclCommunicator> nccl_;
  std::vector<void*> buffers_;
};

TEST_F(NcclTest, AllreduceAllgatherAlltoallBroadcast) {
  const int p = nccl_->size(), rank = nccl_->rank();
  for (std::size_t n : {std::size_t{1}, std::size_t{97}, std::size_t{1} << 20}) {
    std::vector<float> x(n);
    for (std::size_t i = 0; i < n; ++i) x[i] = static_cast<float>((i + rank) % 13) * 0.5f;
    float* d = device_copy(x);
    nccl_->allreduce(TensorView(d, n, DType::kFloat32, Device::kCuda), TensorView(d, n, DType::kFloat32, Device::kCuda),
                     ReduceOp::kSum)->wait();
    const auto sum = host_copy(d, n);
    for (std::size_t i = 0; i < n; ++i) {
      float expected = 0;
      for (int r = 0; r < p; ++r) expected += static_cast<float>((i + r) % 13) * 0.5f;
      ASSERT_EQ(sum[i], expected);
    }
    EXPECT_TRUE(testing::same_on_all_ranks(sum));
  }
  std::vector<std::uint32_t> mine(5, static_cast<std::uint32_t>(rank));
  std::uint32_t* send = device_copy(mine);
  std::uint32_t* all = device_copy(std::vector<std::uint32_t>(5 * p));
  nccl_->allgather(TensorView(send, 5, DType::kUInt32, Device::kCuda),
                   TensorView(all, 5 * p, DType::kUInt32, Device::kCuda))->wait();
  const auto gathered = host_copy(all, 5 * p);
  for (int r = 0; r < p; ++r) EXPECT_EQ(gathered[5 * r], static_cast<std::uint32_t>(r));

  std::vector<std::int32_t> to_all(3 * p);
  for (int dst = 0; dst < p; ++dst)
    for (int i = 0; i < 3; ++i) to_all[3 * dst + i] = rank * 100 + dst * 10 + i;
  std::int32_t* a2a_send = device_copy(to_all);
  std::int32_t* a2a_recv = device_copy(std::vector<std::int32_t>(3 * p));
  nccl_->alltoall(TensorView(a2a_send, 3 * p, DType::kInt32, Device::kCuda),
                  TensorView(a2a_recv, 3 * p, DType::kInt32, Device::kCuda))->wait();
  const auto got = host_copy(a2a_recv, 3 * p);
  for (int src = 0; src < p; ++src)
    for (int i = 0; i < 3; ++i) ASSERT_EQ(got[3 * src + i], src * 100 + rank * 10 + i);

  std::vector<float> b(11, rank == p - 1 ? 4.0f : 0.0f);
  float* bd = device_copy(b);
  nccl_->broadcast(TensorView(bd, 11, DType::kFloat32, Device::kCuda), p - 1)->wait();
  EXPECT_EQ(host_copy(bd, 11)[10], 4.0f);
  nccl_->barrier()->wait();
}

TEST_F(NcclTest, HostBuffersAreRejected) {
  std::vector<float> host(4);
  EXPECT_THROW(nccl_->allreduce(TensorView::of(std::span<float>(host)), TensorView::of(std::span<float>(host)),
                                ReduceOp::kSum),
               Error);
}

}  // namespace
}  // namespace gradcomm

#else
TEST(NcclCommunicator, NotBuilt) { GTEST_SKIP() << "built without NCCL"; }
#endif
