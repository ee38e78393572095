// NcclCommunicator on one rank (bootstrapped over a one-rank ThreadCommunicator: the GPU
// machine has no MPI): follow_stream and Work::wait_stream order by events, never by a
// host wait, and works are recycled. A kernel held back by a flag in mapped host memory,
// which the host sets only after the calls returned, proves they did not wait: had one
// waited for the kernel, the kernel would have given up (after ~10 s) without seeing it.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#if defined(GRADCOMM_HAVE_NCCL)
#include <memory>
#include <vector>

#include "gpu_test_util.h"
#include "gradcomm/nccl_communicator.h"
#include "gradcomm/thread_communicator.h"

namespace gradcomm {
namespace {

using testing::DeviceArray;

// Thread 0 waits for *flag (or gives up after ~10 s of clock), notes what it saw, then
// every thread of the one block writes `value` everywhere.
__global__ void write_after_flag(const volatile int* flag, int* seen, float* data, std::size_t n, float value) {
  __shared__ int go;
  if (threadIdx.x == 0) {
    const long long start = clock64();
    while (*flag == 0 && clock64() - start < 20000000000LL) {
    }
    go = *flag;
    *seen = go;
  }
  __syncthreads();
  for (std::size_t i = threadIdx.x; i < n; i += blockDim.x) data[i] = value;
}

class NcclOneRank : public ::testing::Test {
 protected:
  void SetUp() override {
    boot_ = std::move(ThreadCommunicator::create(1).front());
    nccl_ = std::make_unique<NcclCommunicator>(*boot_, NcclCommunicatorOptions{.device = 0});
    GPU_OK(cudaStreamCreateWithFlags(&user_, cudaStreamNonBlocking));
    void* flag = nullptr;
    GPU_OK(cudaHostAlloc(&flag, sizeof(int), cudaHostAllocMapped));
    flag_ = static_cast<volatile int*>(flag);
    *flag_ = 0;
    GPU_OK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&device_flag_), const_cast<int*>(flag_), 0));
  }
  void TearDown() override {
    *flag_ = 1;  // a failed test must not leave a kernel spinning
    cudaDeviceSynchronize();
    nccl_.reset();
    cudaStreamDestroy(user_);
    cudaFreeHost(const_cast<int*>(flag_));
  }
  TensorView view(const DeviceArray<float>& a) const { return TensorView(a.get(), a.size(), DType::kFloat32, Device::kCuda); }

  std::unique_ptr<ThreadCommunicator> boot_;
  std::unique_ptr<NcclCommunicator> nccl_;
  cudaStream_t user_ = nullptr;
  volatile int* flag_ = nullptr;
  int* device_flag_ = nullptr;
};

constexpr std::size_t kN = 1 << 16;

TEST_F(NcclOneRank, FollowStreamOrdersTheCollectiveAfterTheCallersWork) {
  DeviceArray<float> send(kN), recv(std::vector<float>(kN, -1.0f));
  DeviceArray<int> seen(1);
  write_after_flag<<<1, 256, 0, user_>>>(device_flag_, seen.get(), send.get(), kN, 3.0f);
  GPU_OK(cudaGetLastError());
  nccl_->follow_stream(user_);
  WorkHandle work = nccl_->allreduce(view(send), view(recv), ReduceOp::kSum);
  *flag_ = 1;  // only now may the kernel write what the allreduce reads
  work->wait();
  EXPECT_EQ(seen.download()[0], 1) << "follow_stream or allreduce waited on the host for the caller's stream";
  EXPECT_EQ(recv.download(), std::vector<float>(kN, 3.0f)) << "the allreduce read the buffer before the kernel wrote it";
}

TEST_F(NcclOneRank, WaitStreamOrdersTheCallersStreamWithoutAHostWait) {
  DeviceArray<float> send(kN), recv(std::vector<float>(kN, -1.0f)), copy(std::vector<float>(kN, -2.0f));
  DeviceArray<int> seen(1);
  auto nccl_stream = static_cast<cudaStream_t>(nccl_->stream());
  write_after_flag<<<1, 256, 0, nccl_stream>>>(device_flag_, seen.get(), send.get(), kN, 5.0f);
  GPU_OK(cudaGetLastError());
  WorkHandle work = nccl_->allreduce(view(send), view(recv), ReduceOp::kSum);
  EXPECT_FALSE(work->test());  // held back by the flag
  work->wait_stream(user_);
  work.reset();  // released after wait_stream: must not wait either
  GPU_OK(cudaMemcpyAsync(copy.get(), recv.get(), kN * sizeof(float), cudaMemcpyDeviceToDevice, user_));
  *flag_ = 1;
  GPU_OK(cudaStreamSynchronize(user_));
  EXPECT_EQ(seen.download()[0], 1) << "wait_stream or the release waited on the host";
  EXPECT_EQ(copy.download(), std::vector<float>(kN, 5.0f)) << "the caller's stream ran before the collective ended";
}

TEST_F(NcclOneRank, WorksAndTheirEventsAreRecycled) {
  DeviceArray<float> x(std::vector<float>(97, 1.0f));
  WorkHandle first = nccl_->allreduce(view(x), view(x), ReduceOp::kSum);
  const Work* pooled = first.get();
  first->wait();
  first.reset();
  for (int i = 0; i < 3; ++i) {
    WorkHandle again = nccl_->allreduce(view(x), view(x), ReduceOp::kSum);
    EXPECT_EQ(again.get(), pooled) << "collective " << i << " made a new work (and event)";
    again->wait_stream(user_);
  }
  GPU_OK(cudaStreamSynchronize(user_));
  EXPECT_EQ(x.download(), std::vector<float>(97, 1.0f));
}

}  // namespace
}  // namespace gradcomm
#endif
