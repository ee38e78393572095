// The CUDA quantizer against the CPU path on the same input: payload, residual and the
// decoded rank-order sum must be identical bit for bit, for every bit width, both
// rounding modes, with and without error feedback, lengths off the bucket and off 8,
// and with non-finite inputs (counted the same); at the kernels and through
// QuantizeCompressor with its layers on the device (state blobs, skipped steps, corrupt
// payloads, and a step that neither waits for the device nor allocates).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gaussian_values.h"
#include "gpu_test_util.h"
#include "gradcomm/quantize.h"
#include "kernels/cpu/quantize_kernels.h"
#include "kernels/cuda/quantize_kernels.cuh"
#include "twin_ranks.h"

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
          DeviceBuffer<std::uint32_t> dbad(1);
          QUANT_CUDA_OK(cudaMemcpy(dg.ptr, g.data(), n * sizeof(float), cudaMemcpyHostToDevice));
          QUANT_CUDA_OK(cudaMemcpy(dres.ptr, residual.data(), n * sizeof(float), cudaMemcpyHostToDevice));
          QUANT_CUDA_OK(cudaMemset(dpay.ptr, 0xab, bytes));
          QUANT_CUDA_OK(cudaMemset(dbad.ptr, 0, sizeof(std::uint32_t)));
          kernels::cuda::quantize_error_feedback(dg.ptr, error_feedback ? dres.ptr : nullptr, n, params, dpay.ptr,
                                                 dbad.ptr, nullptr);
          QUANT_CUDA_OK(cudaDeviceSynchronize());
          std::vector<std::uint8_t> gpu_payload(bytes);
          std::vector<float> gpu_res(n);
          std::uint32_t gpu_bad = 0;
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
          kernels::cuda::dequantize_sum(dall.ptr, bytes, 3, n, bits, bucket, 1.0f / 3.0f, dout.ptr, nullptr, false, nullptr);
          QUANT_CUDA_OK(cudaDeviceSynchronize());
          QUANT_CUDA_OK(cudaMemcpy(gpu_out.data(), dout.ptr, n * sizeof(float), cudaMemcpyDeviceToHost));
          ASSERT_EQ(std::memcmp(gpu_out.data(), cpu_out.data(), n * sizeof(float)), 0) << where;
        }
      }
    }
  }
}

struct CompressorCase {
  int bits;
  Rounding rounding;
  bool error_feedback;
  std::size_t bucket;
};

class QuantizeOnCuda : public ::testing::TestWithParam<CompressorCase> {};

QuantizeOptions options_for(const CompressorCase& c) {
  QuantizeOptions o;
  o.bits = c.bits;
  o.max_bits = 8;
  o.rounding = c.rounding;
  o.error_feedback = c.error_feedback;
  o.bucket_size = c.bucket;
  o.seed = 17;
  return o;
}

TEST_P(QuantizeOnCuda, CompressorMatchesCpuBitwise) {
  const CompressorCase c = GetParam();
  const std::vector<LayerSpec> layers = {{"w", 100003, 2}, {"b", 301, 1}, {"odd", 1031, 2}, {"empty", 0, 2}};
  const int ranks = 3;
  testing::TwinRanks<QuantizeCompressor> twins(
      layers, ranks, [&] { return std::make_unique<QuantizeCompressor>(options_for(c)); });
  twins.on_state([&](std::size_t l, int step) {
    for (int r = 0; r < ranks; ++r) {
      ASSERT_TRUE(testing::same_bits(twins.gpu(r).residual(l), twins.cpu(r).residual(l)))
          << "residual, layer " << l << " step " << step << " rank " << r;
    }
  });
  const auto grad = [&](int r, std::size_t l, int step) {
    std::vector<float> g = gaussian_values(layers[l].numel, 300u * r + 7u * l + step, 1.5f);
    if (step == 1 && r == 2 && g.size() > 20) {
      g[3] = std::numeric_limits<float>::quiet_NaN();
      g[11] = std::numeric_limits<float>::infinity();
    }
    return g;
  };
  for (int step = 0; step < 5; ++step) {
    if (step == 3) {  // an L-GreCo re-plan: other widths, the residual kept
      for (int r = 0; r < ranks; ++r) {
        twins.cpu(r).set_layer_bits(0, 2);
        twins.gpu(r).set_layer_bits(0, 2);
        twins.cpu(r).set_layer_bits(2, 8);
        twins.gpu(r).set_layer_bits(2, 8);
      }
    }
    twins.step(step, grad, /*device_words=*/step % 2 == 1, /*skip=*/step == 2);
    if (::testing::Test::HasFatalFailure()) return;
  }
  for (int r = 0; r < ranks; ++r) {
    const std::vector<std::byte> blob = twins.cpu(r).save_state();
    EXPECT_EQ(twins.gpu(r).save_state(), blob);
    twins.gpu(r).load_state(blob);
    EXPECT_EQ(twins.gpu(r).save_state(), blob);
  }
  twins.step(5, grad, true);
}

INSTANTIATE_TEST_SUITE_P(Settings, QuantizeOnCuda,
                         ::testing::Values(CompressorCase{4, Rounding::kNearest, true, 512},
                                           CompressorCase{3, Rounding::kStochastic, true, 64},
                                           CompressorCase{1, Rounding::kStochastic, false, 8},
                                           CompressorCase{8, Rounding::kNearest, false, 1024}));

TEST(QuantizeOnCudaDecode, CorruptPayloadFailsAsOnTheCpu) {
  const std::size_t n = 4093;  // the last group ends in zero codes
  const std::vector<LayerSpec> layers = {{"w", n, 2}};
  QuantizeCompressor cpu({.bits = 4, .bucket_size = 512}), gpu({.bits = 4, .bucket_size = 512});
  cpu.setup(layers, 2, 0);
  gpu.setup(testing::on_cuda(layers), 2, 0);
  testing::StepContext context(1);
  gpu.set_execution(context.stream_only());
  const std::size_t bytes = cpu.wire(0).bytes();
  std::vector<std::uint8_t> received(2 * bytes);
  for (int r = 0; r < 2; ++r) {
    std::vector<float> g = gaussian_values(n, 90 + r);
    cpu.encode(0, TensorView::of(std::span<float>(g)), TensorView(received.data() + r * bytes, bytes, DType::kUInt8));
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::size_t meta_at = bytes + quant::meta_offset() + 8 * 3;  // rank 1, bucket 3
  for (const int fault : {0, 1, 2}) {
    std::vector<std::uint8_t> bad = received;
    if (fault == 0) std::memcpy(bad.data() + meta_at, &nan, 4);         // metadata
    if (fault == 1) bad[bytes + 1] ^= 0x01;                              // header
    if (fault == 2) bad[bytes - 1] = 0x5a;                               // rank 0's padding codes
    std::vector<float> out(n);
    std::string want, got;
    try {
      cpu.decode(0, TensorView(bad.data(), bad.size(), DType::kUInt8), TensorView::of(std::span<float>(out)));
    } catch (const Error& e) {
      want = e.what();
    }
    testing::DeviceArray<std::uint8_t> dbad(bad);
    testing::DeviceArray<float> dout(n);
    try {
      gpu.decode(0, dbad.view(DType::kUInt8), dout.view(DType::kFloat32));
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kCorruptPayload);
      got = e.what();
    }
    ASSERT_FALSE(want.empty()) << "fault " << fault;
    EXPECT_EQ(got, want) << "fault " << fault;
    for (float x : dout.download()) ASSERT_EQ(x, 0.0f);
  }
}

TEST(QuantizeOnCudaStep, NeitherWaitsNorAllocates) {
  QuantizeOptions o;
  o.rounding = Rounding::kStochastic;
  testing::check_captured_steps<QuantizeCompressor>({{"w", 30000, 2}, {"b", 100, 1}},
                                                    [&] { return std::make_unique<QuantizeCompressor>(o); });
}

}  // namespace
}  // namespace gradcomm
