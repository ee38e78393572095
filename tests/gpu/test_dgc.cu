// DgcCompressor with its layers on a CUDA device against the same compressor on the CPU:
// payloads (the selected set, for both selections), u, v, updates, the state blob and the
// non-finite counts bitwise, through warm-up, a flush, a skipped step and non-finite
// gradients; the threshold search's round limit; corrupt payloads; and a step that neither
// waits for the device nor allocates (it must survive CUDA graph capture).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "gaussian_values.h"
#include "gpu_test_util.h"
#include "gradcomm/dgc.h"
#include "kernels/cpu/dgc_kernels.h"
#include "kernels/cuda/dgc_kernels.cuh"
#include "twin_ranks.h"
#include "unit/dgc_reference.h"

namespace gradcomm {
namespace {

using testing::DeviceArray;
using testing::gaussian_values;
using testing::same_bits;
using testing::StepContext;
using testing::TwinRanks;

struct Case {
  DgcSelection selection;
  bool nesterov;
  DType values;
};

class DgcOnCuda : public ::testing::TestWithParam<Case> {};

DgcOptions options_for(const Case& c) {
  DgcOptions o;
  o.density = 0.01;
  o.warmup_densities = {0.01, 0.5};  // epoch 1 goes dense: the first dense step flushes v
  o.steps_per_epoch = 2;
  o.selection = c.selection;
  o.nesterov = c.nesterov;
  o.value_dtype = c.values;
  return o;
}

std::vector<float> gradient(int rank, std::size_t layer, int step, std::size_t n) {
  std::vector<float> g = gaussian_values(n, 1000u * rank + 10u * layer + step);
  if (step == 1 && rank == 1 && n > 10) {
    g[5] = std::numeric_limits<float>::quiet_NaN();
    g[9] = -std::numeric_limits<float>::infinity();
  }
  if (step == 3 && n > 4000) std::fill(g.begin() + 100, g.begin() + 3000, 2.5f);  // ties
  return g;
}

TEST_P(DgcOnCuda, CompressorMatchesCpuBitwise) {
  const Case c = GetParam();
  const std::vector<LayerSpec> layers = {{"w", 100003, 2}, {"b", 301, 1}, {"tiny", 40, 2}};
  const int ranks = 3;
  TwinRanks<DgcCompressor> twins(layers, ranks, [&] { return std::make_unique<DgcCompressor>(options_for(c)); });
  twins.on_state([&](std::size_t l, int step) {
    for (int r = 0; r < ranks; ++r) {
      ASSERT_TRUE(same_bits(twins.gpu(r).momentum(l), twins.cpu(r).momentum(l))) << "u, layer " << l << " step " << step;
      ASSERT_TRUE(same_bits(twins.gpu(r).residual(l), twins.cpu(r).residual(l))) << "v, layer " << l << " step " << step;
    }
  });
  const auto grad = [&](int r, std::size_t l, int step) { return gradient(r, l, step, layers[l].numel); };
  for (int step = 0; step < 7; ++step) {
    twins.step(step, grad, /*device_words=*/step % 2 == 0, /*skip=*/step == 4);
    if (::testing::Test::HasFatalFailure()) return;
    for (int r = 0; r < ranks; ++r) {
      const DgcLayerStats& want = twins.cpu(r).last_stats(0);
      const DgcLayerStats& got = twins.gpu(r).last_stats(0);
      EXPECT_EQ(got.sent, want.sent) << "step " << step;
      EXPECT_EQ(got.candidates, want.candidates) << "step " << step;
      EXPECT_EQ(got.rounds, want.rounds) << "step " << step;
      EXPECT_EQ(std::bit_cast<std::uint32_t>(got.threshold), std::bit_cast<std::uint32_t>(want.threshold));
    }
  }
  // The blob does not depend on the device, and loads across devices.
  for (int r = 0; r < ranks; ++r) {
    const std::vector<std::byte> blob = twins.cpu(r).save_state();
    EXPECT_EQ(twins.gpu(r).save_state(), blob) << "rank " << r;
    twins.gpu(r).load_state(blob);
    EXPECT_EQ(twins.gpu(r).save_state(), blob) << "rank " << r;
  }
  twins.step(7, grad, true);
}

INSTANTIATE_TEST_SUITE_P(Selections, DgcOnCuda,
                         ::testing::Values(Case{DgcSelection::kSampled, false, DType::kFloat32},
                                           Case{DgcSelection::kSampled, true, DType::kFloat16},
                                           Case{DgcSelection::kExact, false, DType::kFloat32},
                                           Case{DgcSelection::kExact, true, DType::kFloat16}));

// One compressor with layers on both devices: each layer as on its own device.
TEST(DgcOnCudaMixed, CpuAndCudaLayersInOneCompressor) {
  const std::vector<LayerSpec> layers = {{"w", 30011, 2}, {"c", 4000, 2}, {"b", 64, 1}};
  const Case c{DgcSelection::kSampled, false, DType::kFloat32};
  TwinRanks<DgcCompressor> twins(layers, 2, [&] { return std::make_unique<DgcCompressor>(options_for(c)); },
                                 /*host_layers=*/{1});
  const auto grad = [&](int r, std::size_t l, int step) { return gradient(r, l, step, layers[l].numel); };
  for (int step = 0; step < 5; ++step) {
    twins.step(step, grad, step % 2 == 0, step == 3);
    if (::testing::Test::HasFatalFailure()) return;
  }
  for (int r = 0; r < 2; ++r) EXPECT_EQ(twins.gpu(r).save_state(), twins.cpu(r).save_state());
}

TEST(DgcOnCudaClipping, FactorMatchesCpuToRounding) {
  // The sum of squares runs in another (fixed) order on the GPU, so the factor may differ
  // from the CPU's in its last bit: within one float ulp.
  const std::size_t n = 200003;
  for (const float spread : {0.001f, 3.0f}) {
    std::vector<float> g = gaussian_values(n, 71, spread);
    g[7] = std::numeric_limits<float>::quiet_NaN();  // not counted in the norm
    DgcOptions o;
    o.clip_norm = 5.0f;
    DgcCompressor cpu(o);
    cpu.setup(std::vector<LayerSpec>{{"w", n, 2}}, 4, 0);
    const float want = cpu.clip_scale(g.data(), n);
    DeviceArray<float> dg(g);
    kernels::cuda::DgcWorkspace workspace(n, 1, 100, 0);
    kernels::cuda::dgc_clip_scale(dg.get(), n, 5.0 / std::sqrt(4.0), workspace, nullptr);
    float got = 0;
    GPU_OK(cudaMemcpy(&got, workspace.clip_scale(), sizeof got, cudaMemcpyDeviceToHost));
    EXPECT_LE(std::fabs(got - want), std::nextafter(want, 2.0f) - want) << "spread " << spread;
    if (spread == 0.001f) EXPECT_EQ(want, 1.0f);  // within the limit: no clipping
  }
}

// Issue 13 fault 9, on the GPU: the CPU's round-limit case (unit/dgc_reference.h) stops
// after kMaxRounds passes in all with the CPU's payload and v.
TEST(DgcOnCudaSearch, RoundLimitAndPayloadMatchCpu) {
  namespace dgc = kernels::dgc;
  const testing::RoundLimitCase c;
  const testing::RoundLimitCase::Result want = c.run_on_cpu();
  ASSERT_EQ(want.stats.rounds, dgc::kMaxRounds);
  DeviceArray<float> dg(c.grad), du(c.kN), dv(c.kN);
  DeviceArray<std::uint8_t> dp(want.payload.size());
  DeviceArray<dgc::ThresholdMemory> dmemory(1);
  DeviceArray<dgc::SearchStats> dstats(1);
  DeviceArray<std::uint32_t> nonfinite(1);
  kernels::cuda::DgcWorkspace workspace(c.kN, c.kSlots, c.kStride, 0);
  kernels::cuda::dgc_encode_sparse(c.args(dg.get(), du.get(), dv.get(), dp.get(), dmemory.get(), dstats.get()),
                                   workspace, nonfinite.get(), nullptr);
  const dgc::SearchStats got = dstats.download()[0];
  EXPECT_EQ(got.rounds, want.stats.rounds);
  EXPECT_EQ(got.threshold, want.stats.threshold);
  EXPECT_EQ(got.candidates, want.stats.candidates);
  EXPECT_EQ(got.sent, want.stats.sent);
  EXPECT_EQ(dmemory.download()[0].last, want.memory.last);
  EXPECT_EQ(dp.download(), want.payload);
  EXPECT_TRUE(same_bits(dv.download(), want.v));
}

TEST(DgcOnCudaDecode, CorruptPayloadIsReportedAndWritesNothingElse) {
  DgcOptions o;
  o.density = 0.01;
  o.warmup_densities = {};
  const std::size_t n = 5000;
  const std::vector<LayerSpec> layers = testing::on_cuda({{"w", n, 2}});
  DgcCompressor a(o), b(o);
  a.setup(layers, 2, 0);
  b.setup(layers, 2, 1);
  StepContext context(1);
  const std::size_t bytes = a.wire(0).bytes();
  DeviceArray<std::uint8_t> received(2 * bytes);
  for (DgcCompressor* c : {&a, &b}) {
    c->set_execution(context.stream_only());
    DeviceArray<float> g(gaussian_values(n, c == &a ? 1 : 2));
    c->encode(0, g.view(DType::kFloat32),
              TensorView(received.get() + (c == &a ? 0 : bytes), bytes, DType::kUInt8, Device::kCuda));
  }
  std::vector<std::uint8_t> bad = received.download();
  const std::uint32_t out_of_range = static_cast<std::uint32_t>(n);
  std::memcpy(bad.data() + bytes + 4 + 4 * 3, &out_of_range, 4);  // rank 1, slot 3
  received.upload(bad);
  DeviceArray<float> out(n);
  try {
    a.decode(0, received.view(DType::kUInt8), out.view(DType::kFloat32));
    ADD_FAILURE() << "a corrupt payload was decoded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kCorruptPayload);
    EXPECT_NE(std::string(e.what()).find("payload of rank 1"), std::string::npos) << e.what();
  }
  for (float x : out.download()) ASSERT_EQ(x, 0.0f);
  // With the engine's array: no throw, the rank is in the array.
  a.set_execution(context.with_words());
  a.decode(0, received.view(DType::kUInt8), out.view(DType::kFloat32));
  EXPECT_EQ(context.corrupt()[0], 1u);
  for (float x : out.download()) ASSERT_EQ(x, 0.0f);
}

TEST(DgcOnCudaStep, NeitherWaitsNorAllocates) {
  DgcOptions o;
  o.density = 0.01;
  o.warmup_densities = {};
  testing::check_captured_steps<DgcCompressor>({{"w", 50000, 2}, {"b", 100, 1}},
                                               [&] { return std::make_unique<DgcCompressor>(o); });
}

}  // namespace
}  // namespace gradcomm
