#include "micro/memory_pass.h"

#include <algorithm>

namespace gradcomm::bench {

void run_memory_pass(benchmark::State& state, std::size_t n, int reads, int writes) {
  std::vector<std::vector<float>> in(static_cast<std::size_t>(reads), std::vector<float>(n));
  std::vector<std::vector<float>> out(static_cast<std::size_t>(writes), std::vector<float>(n));
  for (std::size_t a = 0; a < in.size(); ++a)
    for (std::size_t i = 0; i < n; ++i) in[a][i] = static_cast<float>((i * 7 + a) % 1000) * 1e-3f;
  for (auto _ : state) {
    for (std::size_t i = 0; i < n; ++i) {
      float sum = 0;
      for (auto& a : in) sum += a[i];
      for (auto& o : out) o[i] = sum;
    }
    for (auto& o : out) benchmark::DoNotOptimize(o.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(n * sizeof(float) * static_cast<std::size_t>(reads + writes)));
}

}  // namespace gradcomm::bench
