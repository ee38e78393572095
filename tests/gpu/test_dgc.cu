// The CUDA DGC encode against the CPU path on the same input: with `exact` selection the
// payload, u and v must be identical bit for bit; with `sampled` selection u and v are
// identical, the count stays within the bounds and, whenever the threshold let through at
// least k, the sent set is the exact top-k.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gaussian_values.h"
#include "gradcomm/dgc.h"
#include "kernels/cpu/dgc_kernels.h"
#include "kernels/cuda/dgc_kernels.cuh"
#include "unit/dgc_reference.h"

namespace gradcomm {
namespace {

#define CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call

template <typename T>
struct DeviceArray {
  T* ptr = nullptr;
  explicit DeviceArray(std::size_t n) {
    EXPECT_EQ(cudaMalloc(&ptr, std::max<std::size_t>(n, 1) * sizeof(T)), cudaSuccess);
  }
  ~DeviceArray() { cudaFree(ptr); }
};

using testing::gaussian_values;

kernels::cuda::DgcEncodeArgs encode_args(const float* g, float* u, float* v, std::size_t n,
                                         std::size_t k, void* payload) {
  kernels::cuda::DgcEncodeArgs a;
  a.grad = g;
  a.u = u;
  a.v = v;
  a.n = n;
  a.k = k;
  a.payload = payload;
  return a;
}

struct Case {
  bool nesterov;
  bool half;
};

TEST(DgcCuda, ExactMatchesCpuBitwise) {
  const std::size_t n = 100003;
  for (const Case c : {Case{false, false}, Case{true, false}, Case{false, true}}) {
    DgcOptions o;
    o.density = 0.01;
    o.warmup_densities = {};
    o.selection = DgcSelection::kExact;
    o.nesterov = c.nesterov;
    o.value_dtype = c.half ? DType::kFloat16 : DType::kFloat32;
    DgcCompressor cpu(o);
    cpu.setup(std::vector<LayerSpec>{{"w", n, 2, false}}, 1, 0);
    const std::size_t k = cpu.k(0);
    const std::size_t bytes = kernels::cuda::dgc_payload_bytes(k, c.half);
    ASSERT_EQ(bytes, cpu.wire(0).bytes());
    DeviceArray<float> g(n), u(n), v(n);
    DeviceArray<std::uint8_t> payload(bytes);
    CUDA_OK(cudaMemset(u.ptr, 0, n * 4));
    CUDA_OK(cudaMemset(v.ptr, 0, n * 4));
    kernels::cuda::DgcWorkspace workspace(n, 100);
    for (int step = 0; step < 4; ++step) {
      std::vector<float> grad = gaussian_values(n, 11 + step);
      if (step == 2) std::fill(grad.begin() + 100, grad.begin() + 3000, 2.5f);  // ties
      std::vector<std::byte> expect(bytes);
      cpu.encode(0, TensorView::of(std::span<float>(grad)),
                 TensorView(expect.data(), bytes, DType::kUInt8));
      CUDA_OK(cudaMemcpy(g.ptr, grad.data(), n * 4, cudaMemcpyHostToDevice));
      kernels::cuda::DgcEncodeArgs a = encode_args(g.ptr, u.ptr, v.ptr, n, k, payload.ptr);
      a.momentum = o.momentum;
      a.nesterov = c.nesterov;
      a.exact = true;
      a.half_values = c.half;
      const kernels::cuda::DgcEncodeResult r = kernels::cuda::dgc_encode(a, workspace, nullptr);
      EXPECT_EQ(r.sent, cpu.last_stats(0).sent);
      std::vector<std::byte> got(bytes);
      std::vector<float> gu(n), gv(n);
      CUDA_OK(cudaMemcpy(got.data(), payload.ptr, bytes, cudaMemcpyDeviceToHost));
      CUDA_OK(cudaMemcpy(gu.data(), u.ptr, n * 4, cudaMemcpyDeviceToHost));
      CUDA_OK(cudaMemcpy(gv.data(), v.ptr, n * 4, cudaMemcpyDeviceToHost));
      ASSERT_EQ(got, expect) << "payload, step " << step << " nesterov " << c.nesterov << " half "
                             << c.half;
      ASSERT_EQ(std::memcmp(gu.data(), cpu.momentum(0).data(), n * 4), 0) << "u, step " << step;
      ASSERT_EQ(std::memcmp(gv.data(), cpu.residual(0).data(), n * 4), 0) << "v, step " << step;
    }
  }
}

TEST(DgcCuda, SampledWithinCountBounds) {
  const std::size_t n = 1 << 20;
  const double density = 0.001;
  const std::size_t k = static_cast<std::size_t>(std::ceil(density * n));
  DeviceArray<float> g(n), u(n), v(n);
  DeviceArray<std::uint8_t> payload(kernels::cuda::dgc_payload_bytes(k, false));
  CUDA_OK(cudaMemset(u.ptr, 0, n * 4));
  CUDA_OK(cudaMemset(v.ptr, 0, n * 4));
  kernels::cuda::DgcWorkspace workspace(n, 100);
  std::vector<float> cu(n, 0.0f), cv(n, 0.0f);  // the CPU kernels on the same input
  for (int step = 0; step < 5; ++step) {
    std::vector<float> grad = gaussian_values(n, 31 + step);
    kernels::DgcAccumulateArgs args;
    args.momentum = 0.9f;
    kernels::dgc_accumulate(grad.data(), cu.data(), cv.data(), n, args);
    const std::vector<float> accumulated = cv;
    CUDA_OK(cudaMemcpy(g.ptr, grad.data(), n * 4, cudaMemcpyHostToDevice));
    kernels::cuda::DgcEncodeArgs a = encode_args(g.ptr, u.ptr, v.ptr, n, k, payload.ptr);
    a.density = density;
    a.sample_start = static_cast<std::size_t>(step * 37);
    const kernels::cuda::DgcEncodeResult r = kernels::cuda::dgc_encode(a, workspace, nullptr);
    EXPECT_LE(r.sent, k);
    EXPECT_GE(r.sent, static_cast<std::size_t>(0.8 * static_cast<double>(k))) << "step " << step;
    std::vector<std::uint8_t> bytes(kernels::cuda::dgc_payload_bytes(k, false));
    std::vector<float> gv(n);
    CUDA_OK(cudaMemcpy(bytes.data(), payload.ptr, bytes.size(), cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(gv.data(), v.ptr, n * 4, cudaMemcpyDeviceToHost));
    std::uint32_t count = 0;
    std::memcpy(&count, bytes.data(), 4);
    ASSERT_EQ(count, r.sent);
    std::vector<std::uint32_t> idx(count);
    std::memcpy(idx.data(), bytes.data() + 4, 4 * count);
    for (std::size_t j = 0; j < count; ++j) {
      ASSERT_TRUE(j == 0 || idx[j] > idx[j - 1]);
      float value;
      std::memcpy(&value, bytes.data() + 4 + 4 * k + 4 * j, 4);
      ASSERT_EQ(value, accumulated[idx[j]]);
      ASSERT_GE(std::fabs(value), std::bit_cast<float>(r.threshold_bits));
      cv[idx[j]] = 0.0f;  // mirror the send on the CPU copy
      cu[idx[j]] = 0.0f;
    }
    if (r.candidates >= k)
      EXPECT_EQ(idx, testing::reference_topk(accumulated, k)) << "step " << step;
    ASSERT_EQ(std::memcmp(gv.data(), cv.data(), n * 4), 0) << "v, step " << step;
  }
}

}  // namespace
}  // namespace gradcomm
