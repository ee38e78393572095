// ThreadCommunicator with Device::kCuda: 2 to 8 ranks on one GPU, each with its own
// stream. Every collective's results must be bitwise those of the same collective over
// ThreadCommunicator on the CPU (same inputs), on every rank; the DGC Exchanger path is
// covered on the CPU (tests/unit/test_thread_exchanger.cpp).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "core/float16.h"
#include "gradcomm/thread_communicator.h"

namespace gradcomm {
namespace {

#define THREAD_CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call

using Bytes = std::vector<std::byte>;

Bytes values(DType dtype, int rank, std::size_t n) {
  Bytes b(n * dtype_size(dtype));
  for (std::size_t i = 0; i < n; ++i) {
    const float x = std::sin(static_cast<float>(i) * 0.37f + static_cast<float>(rank)) *
                    static_cast<float>(rank + 1);
    std::uint32_t v =
        static_cast<std::uint32_t>(i) * 2654435761u + static_cast<std::uint32_t>(rank) * 40503u;
    if (dtype == DType::kFloat32) v = std::bit_cast<std::uint32_t>(x);
    if (dtype == DType::kFloat16) v = float_to_half(x);
    if (dtype == DType::kBFloat16) v = float_to_bfloat16(x);
    std::memcpy(b.data() + i * dtype_size(dtype), &v, dtype_size(dtype));
  }
  return b;
}

// A collective, run by `body` on p ranks on the CPU and on the GPU: the recv bytes of
// each rank. `body(comm, send, recv)` gets views on the communicator's device.
using Body = std::function<void(ThreadCommunicator&, TensorView send, TensorView recv)>;

std::vector<Bytes> run(int p, Device device, const std::vector<Bytes>& sends,
                       std::size_t recv_bytes, DType dtype, const Body& body) {
  std::vector<Bytes> recvs(static_cast<std::size_t>(p));
  ThreadCommunicator::run(
      p,
      [&](ThreadCommunicator& comm) {
        const auto me = static_cast<std::size_t>(comm.rank());
        const Bytes& send = sends[me];
        Bytes& recv = recvs[me];
        recv.assign(recv_bytes, std::byte{0x5a});
        if (device == Device::kCpu) {
          Bytes in = send;
          body(comm, TensorView(in.data(), in.size() / dtype_size(dtype), dtype),
               TensorView(recv.data(), recv.size() / dtype_size(dtype), dtype));
          return;
        }
        auto stream = static_cast<cudaStream_t>(comm.stream());
        ASSERT_NE(stream, nullptr);
        void* d_send = nullptr;
        void* d_recv = nullptr;
        THREAD_CUDA_OK(cudaMalloc(&d_send, std::max<std::size_t>(send.size(), 1)));
        THREAD_CUDA_OK(cudaMalloc(&d_recv, std::max<std::size_t>(recv.size(), 1)));
        // Queued on the rank's stream: the collective must come after these copies.
        THREAD_CUDA_OK(
            cudaMemcpyAsync(d_send, send.data(), send.size(), cudaMemcpyHostToDevice, stream));
        THREAD_CUDA_OK(
            cudaMemcpyAsync(d_recv, recv.data(), recv.size(), cudaMemcpyHostToDevice, stream));
        body(comm, TensorView(d_send, send.size() / dtype_size(dtype), dtype, Device::kCuda),
             TensorView(d_recv, recv.size() / dtype_size(dtype), dtype, Device::kCuda));
        THREAD_CUDA_OK(cudaMemcpy(recv.data(), d_recv, recv.size(), cudaMemcpyDeviceToHost));
        cudaFree(d_send);
        cudaFree(d_recv);
      },
      {.device = device});
  return recvs;
}

void expect_same_on_cpu_and_gpu(int p, const std::vector<Bytes>& sends, std::size_t recv_bytes,
                                DType dtype, const Body& body, const std::string& what) {
  const auto cpu = run(p, Device::kCpu, sends, recv_bytes, dtype, body);
  const auto gpu = run(p, Device::kCuda, sends, recv_bytes, dtype, body);
  for (int r = 0; r < p; ++r) {
    EXPECT_TRUE(gpu[r] == cpu[r]) << what << ": rank " << r << " of " << p;
    EXPECT_TRUE(gpu[r] == gpu[0] || what.find("alltoall") != std::string::npos ||
                what.find("broadcast") != std::string::npos)
        << what << ": rank " << r << " differs from rank 0";
  }
}

TEST(ThreadCommunicatorCuda, AllreduceEveryDtypeAndOpMatchesTheCpu) {
  for (int p : {2, 3, 4, 8}) {
    for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kInt32,
                        DType::kUInt32, DType::kUInt8}) {
      for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
        for (std::size_t n :
             {std::size_t{0}, std::size_t{1}, std::size_t{97}, std::size_t{300007}}) {
          std::vector<Bytes> sends;
          for (int r = 0; r < p; ++r) sends.push_back(values(dtype, r, n));
          expect_same_on_cpu_and_gpu(
              p, sends, n * dtype_size(dtype), dtype,
              [op](ThreadCommunicator& comm, TensorView send, TensorView recv) {
                comm.allreduce(send, recv, op)->wait();
              },
              std::string("allreduce ") + dtype_name(dtype) + " " + reduce_op_name(op) +
                  " n=" + std::to_string(n));
          // In place, waited with test().
          expect_same_on_cpu_and_gpu(
              p, sends, n * dtype_size(dtype), dtype,
              [op](ThreadCommunicator& comm, TensorView send, TensorView recv) {
                WorkHandle w = comm.allreduce(send, send, op);
                while (!w->test()) {
                }
                // Equal on every rank now: their max is that value, in recv.
                comm.allreduce(send, recv, ReduceOp::kMax)->wait();
              },
              std::string("in-place allreduce ") + dtype_name(dtype));
        }
      }
    }
  }
}

TEST(ThreadCommunicatorCuda, GatherScatterAndBroadcastMatchTheCpu) {
  for (int p : {2, 3, 5}) {
    const std::size_t n = 1001;
    std::vector<Bytes> sends;
    for (int r = 0; r < p; ++r) sends.push_back(values(DType::kFloat32, r, n));
    expect_same_on_cpu_and_gpu(
        p, sends, n * 4 * static_cast<std::size_t>(p), DType::kFloat32,
        [](ThreadCommunicator& comm, TensorView send, TensorView recv) {
          comm.allgather(send, recv)->wait();
        },
        "allgather");
    std::vector<std::size_t> counts(static_cast<std::size_t>(p));
    for (int r = 0; r < p; ++r) counts[r] = r == 1 ? 0 : static_cast<std::size_t>(3 * r + 1);
    const std::size_t total = std::accumulate(counts.begin(), counts.end(), std::size_t{0});
    std::vector<Bytes> parts;
    for (int r = 0; r < p; ++r) parts.push_back(values(DType::kUInt8, r, counts[r]));
    expect_same_on_cpu_and_gpu(
        p, parts, total, DType::kUInt8,
        [&](ThreadCommunicator& comm, TensorView send, TensorView recv) {
          comm.allgatherv(send, recv, counts)->wait();
        },
        "allgatherv");
    const std::size_t chunk = 333;
    std::vector<Bytes> blocks;
    for (int r = 0; r < p; ++r)
      blocks.push_back(values(DType::kInt32, r, chunk * static_cast<std::size_t>(p)));
    expect_same_on_cpu_and_gpu(
        p, blocks, chunk * 4 * static_cast<std::size_t>(p), DType::kInt32,
        [](ThreadCommunicator& comm, TensorView send, TensorView recv) {
          comm.alltoall(send, recv)->wait();
        },
        "alltoall");
    expect_same_on_cpu_and_gpu(
        p, sends, n * 4, DType::kFloat32,
        [p](ThreadCommunicator& comm, TensorView send, TensorView recv) {
          comm.broadcast(send, p - 1)->wait();
          comm.allreduce(send, recv, ReduceOp::kMax)->wait();  // = the root's values
        },
        "broadcast");
  }
}

// Streams given by the caller are used, and a collective orders after the caller's work
// queued on them before the call.
TEST(ThreadCommunicatorCuda, CallerStreamsOrderTheCollective) {
  constexpr int p = 3;
  std::vector<cudaStream_t> streams(p);
  for (auto& s : streams) THREAD_CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  std::vector<void*> raw(streams.begin(), streams.end());
  std::vector<float> results(p);
  ThreadCommunicator::run(
      p,
      [&](ThreadCommunicator& comm) {
        ASSERT_EQ(comm.stream(), raw[comm.rank()]);
        const std::size_t n = 1 << 22;
        float* d = nullptr;
        THREAD_CUDA_OK(cudaMalloc(&d, n * sizeof(float)));
        std::vector<float> host(n, static_cast<float>(comm.rank() + 1));
        THREAD_CUDA_OK(cudaMemcpyAsync(d, host.data(), n * sizeof(float), cudaMemcpyHostToDevice,
                                       streams[comm.rank()]));
        comm.allreduce(TensorView(d, n, DType::kFloat32, Device::kCuda),
                       TensorView(d, n, DType::kFloat32, Device::kCuda), ReduceOp::kSum)
            ->wait();
        THREAD_CUDA_OK(
            cudaMemcpy(&results[comm.rank()], d + n - 1, sizeof(float), cudaMemcpyDeviceToHost));
        cudaFree(d);
      },
      {.device = Device::kCuda, .streams = raw});
  for (float x : results) EXPECT_EQ(x, 6.0f);
  for (auto& s : streams) cudaStreamDestroy(s);
}

}  // namespace
}  // namespace gradcomm
