// NcclCommunicator on 2, 3 and 4 ranks, bootstrapped over MPI. Labelled gpu: needs a
// CUDA device per rank on each host (NCCL refuses two ranks on one device: "Duplicate GPU
// detected"), and skips on every rank when any rank has none or a host has more ranks
// than devices. Several ranks on one GPU are ThreadCommunicator's (tests/gpu).
#include <gtest/gtest.h>

#if defined(GRADCOMM_HAVE_NCCL)
#include <cuda_runtime.h>

#include <numeric>
#include <vector>

#include "gradcomm/local_device.h"
#include "gradcomm/mpi_communicator.h"
#include "gradcomm/nccl_communicator.h"
#include "mpi/cuda_buffers.h"
#include "mpi/mpi_test_util.h"
#include "uneven_parts.h"

namespace gradcomm {
namespace {

class NcclTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::all_ranks(testing::have_cuda_device())) GTEST_SKIP() << "no CUDA device on some rank";
    mpi_ = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD);
    host_ = mpi_->split_shared();
    int count = 0;
    cudaGetDeviceCount(&count);
    if (!testing::all_ranks(host_->size() <= count)) {
      GTEST_SKIP() << "more ranks than CUDA devices on a host (" << host_->size() << " ranks, " << count
                   << " devices): NCCL refuses two ranks on one device";
    }
    const LocalDevice local = local_cuda_device();  // as the binaries pick theirs
    EXPECT_EQ(local.device, host_->rank()) << local.describe();
    nccl_ = std::make_unique<NcclCommunicator>(*mpi_);
  }
  template <typename T>
  T* device_copy(const std::vector<T>& host) {
    return buffers_.copy(host);
  }
  template <typename T>
  std::vector<T> host_copy(const T* ptr, std::size_t n) {
    return testing::DeviceBuffers::to_host(ptr, n);
  }
  std::unique_ptr<MpiCommunicator> mpi_;
  std::unique_ptr<Communicator> host_;
  std::unique_ptr<NcclCommunicator> nccl_;
  testing::DeviceBuffers buffers_;
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

TEST_F(NcclTest, AlltoallvAndAllgathervWithEmptyParts) {
  const int p = nccl_->size(), me = nccl_->rank();
  testing::UnevenParts parts(me, p);  // tests/uneven_parts.h
  std::int32_t* dsend = device_copy(parts.send);
  std::int32_t* drecv = device_copy(std::vector<std::int32_t>(parts.received(), -1));
  nccl_->alltoallv(TensorView(dsend, parts.send.size(), DType::kInt32, Device::kCuda), parts.send_counts,
                   TensorView(drecv, parts.received(), DType::kInt32, Device::kCuda), parts.recv_counts)->wait();
  EXPECT_EQ(host_copy(drecv, parts.received()), parts.expected);

  std::vector<std::size_t> counts(static_cast<std::size_t>(p));
  for (int r = 0; r < p; ++r) counts[r] = r == 1 ? 0 : static_cast<std::size_t>(2 * r + 1);
  const std::size_t total = std::accumulate(counts.begin(), counts.end(), std::size_t{0});
  std::uint8_t* mine = device_copy(std::vector<std::uint8_t>(counts[me], static_cast<std::uint8_t>(me + 1)));
  std::uint8_t* all = device_copy(std::vector<std::uint8_t>(total, 0));
  nccl_->allgatherv(TensorView(mine, counts[me], DType::kUInt8, Device::kCuda),
                    TensorView(all, total, DType::kUInt8, Device::kCuda), counts)->wait();
  const auto gathered = host_copy(all, total);
  std::size_t at = 0;
  for (int r = 0; r < p; ++r)
    for (std::size_t j = 0; j < counts[r]; ++j) ASSERT_EQ(gathered[at++], r + 1);
}

TEST_F(NcclTest, SplitByParityAndByHost) {
  const int me = nccl_->rank();
  std::unique_ptr<Communicator> half = nccl_->split(me % 2, -me);
  ASSERT_NE(half, nullptr);
  float* x = device_copy(std::vector<float>{static_cast<float>(me)});
  half->allreduce(TensorView(x, 1, DType::kFloat32, Device::kCuda), TensorView(x, 1, DType::kFloat32, Device::kCuda),
                  ReduceOp::kSum)->wait();
  float expected = 0;
  for (int r = me % 2; r < nccl_->size(); r += 2) expected += static_cast<float>(r);
  EXPECT_EQ(host_copy(x, 1)[0], expected);
  std::unique_ptr<Communicator> host = nccl_->split_shared();
  EXPECT_EQ(host->size(), host_->size());
  EXPECT_EQ(host->rank(), host_->rank());
  std::unique_ptr<Communicator> none = nccl_->split(Communicator::kNoColor, 0);
  EXPECT_EQ(none, nullptr);
}

// After abort() every work not yet seen complete fails, and no new collective starts:
// none reports success on what the aborted communicator left in the buffers.
TEST_F(NcclTest, AbortFailsPendingAndLaterCollectives) {
  const std::size_t n = std::size_t{1} << 22;
  float* big = device_copy(std::vector<float>(n, 1.0f));
  WorkHandle pending = nccl_->allreduce(TensorView(big, n, DType::kFloat32, Device::kCuda),
                                        TensorView(big, n, DType::kFloat32, Device::kCuda), ReduceOp::kSum);
  nccl_->abort("the test aborts");
  try {
    pending->wait();
    ADD_FAILURE() << "a work pending at the abort reported success";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kCommunication);
    EXPECT_NE(e.message().find("the test aborts"), std::string::npos) << e.what();
  }
  EXPECT_THROW(pending->test(), Error);
  EXPECT_THROW(nccl_->barrier(), Error);
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
