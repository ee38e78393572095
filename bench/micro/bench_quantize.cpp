// 4-bit quantization on one core next to a memory pass moving the same bytes, measured in
// the same iteration (interleaved, so a neighbour's load on the shared cores hits both):
//   with error feedback: read g and the residual, write the residual (12 bytes/element)
//   without:             read g (4 bytes/element)
// plus the packed payload (about 0.5 bytes/element) in both cases. Counters:
//   x_memory_pass  quantize time / memory-pass time, from this thread's CPU time (goal <= 2)
//   quant_GBps, pass_GBps  fp32 gradient bytes per second
// BM_QuantizeDecode: dequantize-and-sum of 4 ranks' payloads (every rank decodes all).
#include <benchmark/benchmark.h>

#include <chrono>
#include <ctime>
#include <random>
#include <vector>

#include "gradcomm/quantize.h"

namespace gradcomm::bench {
namespace {

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

std::vector<float> gradient(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 1e-3f);
  std::vector<float> g(n);
  for (float& x : g) x = dist(gen);
  return g;
}

// The floor: the same loads and stores as the quantizer's, with no arithmetic to speak of.
void memory_pass(const float* g, float* r, std::size_t n, bool error_feedback, float* sink) {
  if (error_feedback) {
    for (std::size_t i = 0; i < n; ++i) r[i] = r[i] * 0.5f + g[i];
  } else {
    // Sixteen independent sums: a single float sum is a latency chain, not a memory pass.
    float acc[16] = {};
    const std::size_t blocks = n / 16;
    for (std::size_t b = 0; b < blocks; ++b) {
      for (std::size_t j = 0; j < 16; ++j) acc[j] += g[16 * b + j];
    }
    for (std::size_t i = 16 * blocks; i < n; ++i) acc[0] += g[i];
    float s = 0;
    for (float a : acc) s += a;
    *sink = s;
  }
}

void BM_Quantize4BitsVsMemoryPass(benchmark::State& state) {
  const std::size_t n = std::size_t{1} << 24;
  const bool ef = state.range(0) != 0;
  QuantizeOptions o;
  o.bits = 4;
  o.error_feedback = ef;
  o.rounding = state.range(1) != 0 ? Rounding::kStochastic : Rounding::kNearest;
  QuantizeCompressor q(o);
  q.setup(std::vector<LayerSpec>{{"w", n, 2, false}}, 4, 0);
  std::vector<float> g = gradient(n, 1), r(n, 0.0f);
  std::vector<std::uint8_t> payload(q.wire(0).bytes());
  const TensorView gv = TensorView::of(std::span<float>(g));
  const TensorView pv(payload.data(), payload.size(), DType::kUInt8);
  float sink = 0;
  double quant_cpu = 0, pass_cpu = 0, quant_wall = 0, pass_wall = 0;
  std::int64_t step = 0;
  for (auto _ : state) {
    auto w0 = std::chrono::steady_clock::now();
    double c0 = thread_cpu_seconds();
    memory_pass(g.data(), r.data(), n, ef, &sink);
    benchmark::DoNotOptimize(r.data());
    benchmark::DoNotOptimize(sink);
    pass_cpu += thread_cpu_seconds() - c0;
    pass_wall += std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
    w0 = std::chrono::steady_clock::now();
    c0 = thread_cpu_seconds();
    q.set_step(step++);
    q.encode(0, gv, pv);
    benchmark::DoNotOptimize(payload.data());
    quant_cpu += thread_cpu_seconds() - c0;
    quant_wall += std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
  }
  const double iters = static_cast<double>(state.iterations());
  state.counters["x_memory_pass"] = quant_cpu / pass_cpu;
  state.counters["x_memory_pass_wall"] = quant_wall / pass_wall;
  state.counters["quant_GBps"] = 4.0 * n * iters / quant_cpu * 1e-9;
  state.counters["pass_GBps"] = 4.0 * n * iters / pass_cpu * 1e-9;
  state.SetLabel(std::string(ef ? "error feedback" : "no error feedback") + ", " +
                 rounding_name(o.rounding));
}
BENCHMARK(BM_Quantize4BitsVsMemoryPass)
    ->ArgNames({"ef", "stochastic"})
    ->Args({1, 0})
    ->Args({0, 0})
    ->Args({1, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_QuantizeDecode(benchmark::State& state) {
  const std::size_t n = std::size_t{1} << 22;
  const int p = 4;
  QuantizeOptions o;
  o.bits = static_cast<int>(state.range(0));
  QuantizeCompressor q(o);
  q.setup(std::vector<LayerSpec>{{"w", n, 2, false}}, p, 0);
  const std::size_t bytes = q.wire(0).bytes();
  std::vector<std::uint8_t> gathered(p * bytes);
  for (int r = 0; r < p; ++r) {
    QuantizeCompressor other(o);
    other.setup(std::vector<LayerSpec>{{"w", n, 2, false}}, p, r);
    std::vector<float> g = gradient(n, 10 + r);
    other.encode(0, TensorView::of(std::span<float>(g)), TensorView(gathered.data() + r * bytes, bytes, DType::kUInt8));
  }
  std::vector<float> out(n);
  for (auto _ : state) {
    q.decode(0, TensorView(gathered.data(), gathered.size(), DType::kUInt8), TensorView::of(std::span<float>(out)));
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n * p));
}
BENCHMARK(BM_QuantizeDecode)->Arg(4)->Arg(3)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace gradcomm::bench
