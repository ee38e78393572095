// LgrecoCompressor with its layers on a CUDA device against the CPU: the inner
// compressor's payloads and updates bitwise, and the profiled error table (computed on
// the device: norms, bucket errors, the sorted sample) equal to the CPU's to rounding
// (the GPU sums in another order), for both families.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "gaussian_values.h"
#include "gradcomm/lgreco.h"
#include "twin_ranks.h"

namespace gradcomm {
namespace {

void expect_tables_close(const LgrecoTable& got, const LgrecoTable& want, const char* what) {
  ASSERT_EQ(got.layers, want.layers);
  ASSERT_EQ(got.candidates, want.candidates);
  EXPECT_EQ(got.bytes, want.bytes) << what;
  for (std::size_t i = 0; i < want.error.size(); ++i) {
    EXPECT_NEAR(got.error[i], want.error[i], 1e-5 * std::fabs(want.error[i]) + 1e-12) << what << ", entry " << i;
  }
}

TEST(LgrecoOnCuda, ProfilesAsTheCpuDoes) {
  const std::vector<LayerSpec> layers = {{"w", 50000, 2}, {"c", 3001, 2}, {"b", 50, 1}};
  struct Setting {
    LgrecoFamily family;
    Rounding rounding;
    bool nesterov;
  };
  for (const Setting s : {Setting{LgrecoFamily::kQuantBits, Rounding::kNearest, false},
                          Setting{LgrecoFamily::kQuantBits, Rounding::kStochastic, false},
                          Setting{LgrecoFamily::kDgcDensity, Rounding::kNearest, false},
                          Setting{LgrecoFamily::kDgcDensity, Rounding::kNearest, true}}) {
    LgrecoOptions o;
    o.family = s.family;
    o.period = 2;
    o.quantize.rounding = s.rounding;
    o.quantize.bucket_size = 128;
    o.dgc.warmup_densities = {};
    o.dgc.nesterov = s.nesterov;
    o.dgc_sample = 1000;  // smaller than the largest layer: a sampled estimate
    const int ranks = 2;
    testing::TwinRanks<LgrecoCompressor> twins(layers, ranks, [&] { return std::make_unique<LgrecoCompressor>(o); });
    const auto grad = [&](int r, std::size_t l, int step) {
      return testing::gaussian_values(layers[l].numel, 40u * r + 3u * l + step, 1.0f + step);
    };
    for (int step = 0; step < 4; ++step) {
      twins.step(step, grad, true);
      if (::testing::Test::HasFatalFailure()) return;
      for (int r = 0; r < ranks; ++r) {
        ASSERT_EQ(twins.gpu(r).table_ready(), twins.cpu(r).table_ready());
        if (!twins.cpu(r).table_ready()) continue;
        expect_tables_close(twins.gpu(r).local_table(), twins.cpu(r).local_table(),
                            s.family == LgrecoFamily::kQuantBits ? "quant" : "dgc");
        // A plan from the CPU's table, applied to both: the settings change, state is kept.
        std::vector<std::uint32_t> plan(layers.size());
        for (std::size_t l = 0; l < layers.size(); ++l) {
          plan[l] = twins.cpu(r).is_planned(l) ? static_cast<std::uint32_t>((l + step) % twins.cpu(r).num_candidates())
                                               : twins.cpu(r).default_choice()[l];
        }
        twins.cpu(r).apply_plan(plan);
        twins.gpu(r).apply_plan(plan);
        twins.cpu(r).consume_table();
        twins.gpu(r).consume_table();
      }
    }
  }
}

}  // namespace
}  // namespace gradcomm
