// L-GreCo's knapsack DP at the size the issue names (500 layers x 8 candidates x 10,000
// bins), on a table shaped like real profiles: bytes falling and error rising with fewer
// bits, layers of very different sizes and sensitivities.
#include <benchmark/benchmark.h>

#include <cmath>
#include <random>
#include <vector>

#include "gradcomm/lgreco.h"

namespace gradcomm::bench {
namespace {

void BM_LgrecoKnapsack(benchmark::State& state) {
  const auto layers = static_cast<std::size_t>(state.range(0));
  const auto candidates = static_cast<std::size_t>(state.range(1));
  const int bins = static_cast<int>(state.range(2));
  std::mt19937 rng(5);
  std::lognormal_distribution<double> size(10.0, 2.0), sensitivity(0.0, 1.5);
  LgrecoTable table(layers, candidates);
  for (std::size_t l = 0; l < layers; ++l) {
    const double n = size(rng), s = sensitivity(rng);
    for (std::size_t c = 0; c < candidates; ++c) {
      const double bits = 1.0 + static_cast<double>(c);
      table.bytes_at(l, c) = static_cast<std::uint64_t>(n * bits / 8.0) + 16;
      table.error_at(l, c) = s * std::sqrt(n) / ((1 << static_cast<int>(bits)) - 1);
    }
  }
  const std::vector<std::uint32_t> defaults(layers, static_cast<std::uint32_t>(candidates / 2));
  LgrecoKnapsack solver;
  std::uint64_t bytes = 0, default_bytes = 0;
  for (std::size_t l = 0; l < layers; ++l) default_bytes += table.bytes_at(l, defaults[l]);
  for (auto _ : state) {
    const LgrecoPlan& plan = solver.solve(table, defaults, bins);
    bytes = plan.bytes;
    benchmark::DoNotOptimize(bytes);
  }
  state.counters["compression_vs_default"] = static_cast<double>(default_bytes) / static_cast<double>(bytes);
}
BENCHMARK(BM_LgrecoKnapsack)
    ->ArgNames({"layers", "candidates", "bins"})
    ->Args({500, 8, 10000})
    ->Args({50, 6, 10000})
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace gradcomm::bench
