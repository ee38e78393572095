// DenseCompressor with its layers on a CUDA device against the CPU: payloads (fp32 and
// fp16 on the wire), updates and non-finite counts bitwise, through the engine's device
// words and without them.
#include <gtest/gtest.h>

#include <limits>
#include <vector>

#include "gaussian_values.h"
#include "gradcomm/dense.h"
#include "twin_ranks.h"

namespace gradcomm {
namespace {

const std::vector<LayerSpec> kLayers = {{"w", 100003, 2}, {"b", 7, 1}};

std::vector<float> gradient(int rank, std::size_t layer, int step) {
  // Large enough that some values overflow a half.
  std::vector<float> g = testing::gaussian_values(kLayers[layer].numel, 10u * rank + layer + 100u * step, 3.0e4f);
  if (step == 1) g[1] = std::numeric_limits<float>::quiet_NaN();
  return g;
}

TEST(DenseOnCuda, Fp32MatchesCpuOnThreeRanks) {
  testing::TwinRanks<DenseCompressor> twins(kLayers, 3, [] { return std::make_unique<DenseCompressor>(); });
  for (int step = 0; step < 3; ++step) {
    twins.step(step, gradient, /*device_words=*/step != 1);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// fp16 on the wire, one rank: the received sum is the payload itself.
TEST(DenseOnCuda, Fp16MatchesCpu) {
  DenseCompressor cpu({DType::kFloat16}), gpu({DType::kFloat16});
  cpu.setup(kLayers, 1, 0);
  gpu.setup(testing::on_cuda(kLayers), 1, 0);
  testing::StepContext context(kLayers.size());
  gpu.set_execution(context.stream_only());
  for (std::size_t l = 0; l < kLayers.size(); ++l) {
    std::vector<float> g = gradient(0, l, 1);
    std::vector<std::uint16_t> payload(kLayers[l].numel);
    const EncodeResult want =
        cpu.encode(l, TensorView::of(std::span<float>(g)), TensorView(payload.data(), payload.size(), DType::kFloat16));
    testing::DeviceArray<float> dg(g);
    testing::DeviceArray<std::uint16_t> dp(payload.size());
    EXPECT_EQ(gpu.encode(l, dg.view(DType::kFloat32), dp.view(DType::kFloat16)).nonfinite, want.nonfinite);
    EXPECT_EQ(dp.download(), payload) << "layer " << l;
    std::vector<float> out(g.size());
    cpu.decode(l, TensorView(payload.data(), payload.size(), DType::kFloat16), TensorView::of(std::span<float>(out)));
    testing::DeviceArray<float> dout(g.size());
    gpu.decode(l, dp.view(DType::kFloat16), dout.view(DType::kFloat32));
    EXPECT_TRUE(testing::same_bits(dout.download(), out)) << "layer " << l;
  }
}

}  // namespace
}  // namespace gradcomm
