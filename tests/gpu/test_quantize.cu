// The CUDA quantizer against the CPU path on the same input: payload, residual and the
// decoded rank-order sum must be identical bit for bit, for every bit width, both
// rounding modes, with and without error feedback, lengths off the bucket and off 8,
// and with non-finite inputs (counted the same).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gaussian_values.h"
#include "kernels/cpu/quantize_kernels.h"
#include "kernels/cuda/quantize_kernels.cuh"

namespace gradcomm {
namespace {

namespace quant = kernels::quant;

#define QUANT_CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call

template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  explicit DeviceBuffer(std::size_t n) { EXPECT_EQ(cudaMalloc(&ptr, std::max<std::size_t>(n, 1) * sizeof(T)), cudaSuccess); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

using testing::gaussian_values;

TEST(QuantizeCuda, MatchesCpuBitwise) {
  const std::size_t lengths[] = {0, 1, 13, 512, 1031, 100003};
  for (int bits = 1; bits <= 8; ++bits) {
    for (const bool stochastic : {false, true}) {
      for (const bool error_feedback : {true, false}) {
        for (const std::size_t n : lengths) {
          const std::size_t bucket = bits % 2 ? 512 : 64;
          kernels::QuantizeParams params;
          params.bits = bits;
          params.bucket = bucket;
          params.stochastic = stochastic;
          params.rng_key = quant::rng_key(9, 2, 5, 100 + bits);
          std::vector<float> g = gaussian_values(n, 17u * bits + n, 1.5f);
          if (n > 20) {
            g[3] = std::numeric_limits<float>::quiet_NaN();
            g[11] = -std::numeric_limits<float>::infinity();
          }
          std::vector<float> residual = gaussian_values(n, 31u * bits + n, 0.05f);
          const std::size_t bytes = quant::payload_bytes(n, bits, bucket);

          // CPU reference.
          std::vector<float> cpu_res = residual;
          std::vector<std::uint8_t> cpu_payload(bytes, 0xab);
          std::vector<float> ws(2 * bucket);
          const std::size_t cpu_bad = kernels::quantize_error_feedback(
              g.data(), error_feedback ? cpu_res.data() : nullptr, n, params, cpu_payload.data(), ws.data());

          // GPU.
          DeviceBuffer<float> dg(n), dres(n);
          DeviceBuffer<std::uint8_t> dpay(bytes);
          DeviceBuffer<unsigned long long> dbad(1);
          QUANT_CUDA_OK(cudaMemcpy(dg.ptr, g.data(), n * sizeof(float), cudaMemcpyHostToDevice));
          QUANT_CUDA_OK(cudaMemcpy(dres.ptr, residual.data(), n * sizeof(float), cudaMemcpyHostToDevice));
          QUANT_CUDA_OK(cudaMemset(dpay.ptr, 0xab, bytes));
          QUANT_CUDA_OK(cudaMemset(dbad.ptr, 0, sizeof(unsigned long long)));
          kernels::cuda::quantize_error_feedback(dg.ptr, error_feedback ? dres.ptr : nullptr, n, params, dpay.ptr,
                                                 dbad.ptr, nullptr);
          QUANT_CUDA_OK(cudaDeviceSynchronize());
          std::vector<std::uint8_t> gpu_payload(bytes);
          std::vector<float> gpu_res(n);
          unsigned long long gpu_bad = 0;
          QUANT_CUDA_OK(cudaMemcpy(gpu_payload.data(), dpay.ptr, bytes, cudaMemcpyDeviceToHost));
          QUANT_CUDA_OK(cudaMemcpy(gpu_res.data(), dres.ptr, n * sizeof(float), cudaMemcpyDeviceToHost));
          QUANT_CUDA_OK(cudaMemcpy(&gpu_bad, dbad.ptr, sizeof gpu_bad, cudaMemcpyDeviceToHost));
          const auto where = ::testing::Message() << "bits " << bits << " stochastic " << stochastic << " ef "
                                                  << error_feedback << " n " << n;
          ASSERT_EQ(gpu_payload, cpu_payload) << where;
          ASSERT_EQ(gpu_bad, cpu_bad) << where;
          if (error_feedback) {
            ASSERT_EQ(std::memcmp(gpu_res.data(), cpu_res.data(), n * sizeof(float)), 0) << where;
          }

          // Decode three ranks' payloads (this one and two more) on both sides.
          std::vector<std::uint8_t> all(cpu_payload);
          for (int r = 1; r < 3; ++r) {
            std::vector<float> other = gaussian_values(n, 1000u * r + bits, 0.7f), none;
            std::vector<std::uint8_t> p(bytes);
            kernels::quantize_error_feedback(other.data(), nullptr, n, params, p.data(), ws.data());
            all.insert(all.end(), p.begin(), p.end());
          }
          const char* why = "";
          ASSERT_EQ(kernels::find_corrupt_payload(all.data(), bytes, 3, n, bits, bucket, &why), -1) << why;
          std::vector<float> cpu_out(n), gpu_out(n);
          kernels::dequantize_sum(all.data(), bytes, 3, n, bits, bucket, 1.0f / 3.0f, cpu_out.data(), ws.data());
          DeviceBuffer<std::uint8_t> dall(all.size());
          DeviceBuffer<float> dout(n);
          QUANT_CUDA_OK(cudaMemcpy(dall.ptr, all.data(), all.size(), cudaMemcpyHostToDevice));
          kernels::cuda::dequantize_sum(dall.ptr, bytes, 3, n, bits, bucket, 1.0f / 3.0f, dout.ptr, nullptr);
          QUANT_CUDA_OK(cudaDeviceSynchronize());
          QUANT_CUDA_OK(cudaMemcpy(gpu_out.data(), dout.ptr, n * sizeof(float), cudaMemcpyDeviceToHost));
          ASSERT_EQ(std::memcmp(gpu_out.data(), cpu_out.data(), n * sizeof(float)), 0) << where;
        }
      }
    }
  }
}

}  // namespace
}  // namespace gradcomm
