// The worker side of the 1-bit compressed allreduce (norm pass + sign/error pass, as
// compressed_allreduce runs it for 4 ranks) against a memory pass of the same traffic
// per pass (read x and e_w, write one float array), measured in the same run.
//
// BM_OneBitCompress reports `x_two_passes` = compress time / (2 x memory-pass time), with
// the memory pass timed inside the same benchmark, interleaved with the compress, both by
// thread CPU time (its reported time is that CPU time too): the goal is <= 2 (the scale
// must be known before signs and errors are written, so two passes is the floor:
// docs/algorithms/onebit-adam.md). BM_OneBitMemoryPass is the standalone floor.
#include <algorithm>
#include <ctime>
#include <cstdint>
#include <vector>

#include "kernels/cpu/onebit_kernels.h"
#include "micro/memory_pass.h"

namespace {

constexpr int kRanks = 4;

// This thread's CPU time: on a shared machine, time spent descheduled (other processes)
// stays out of both sides of the ratio, while memory stalls, which are the point, stay in.
double thread_seconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

void BM_OneBitCompress(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0));
  const std::size_t multiple = 8 * kRanks;
  const std::size_t padded = (n + multiple - 1) / multiple * multiple;
  const std::size_t chunk = padded / kRanks;
  std::vector<float> x(n), err(padded, 0.0f), pass_out(padded);
  std::vector<std::uint8_t> bits(padded / 8);
  for (std::size_t i = 0; i < n; ++i) x[i] = static_cast<float>((i * 7919) % 2001) * 1e-3f - 1.0f;
  double compress_total = 0, pass_total = 0;
  for (auto _ : state) {
    double start = thread_seconds();
    const gradcomm::kernels::SumSq norm =
        gradcomm::kernels::onebit_compensated_sumsq(x.data(), n, err.data(), padded);
    const float scale = gradcomm::kernels::onebit_scale(norm.sumsq, padded);
    for (std::size_t j = 0; j < kRanks; ++j) {
      const std::size_t begin = j * chunk;
      const std::size_t valid = n > begin ? std::min(chunk, n - begin) : 0;
      gradcomm::kernels::onebit_pack_with_error(x.data() + begin, valid, err.data() + begin, chunk,
                                                scale, bits.data() + begin / 8);
    }
    benchmark::DoNotOptimize(bits.data());
    benchmark::ClobberMemory();
    const double compress = thread_seconds() - start;
    state.SetIterationTime(compress);
    compress_total += compress;

    // One pass with the traffic of either compress pass: read x and e_w, write a float.
    start = thread_seconds();
    for (std::size_t i = 0; i < n; ++i) pass_out[i] = x[i] + err[i];
    benchmark::DoNotOptimize(pass_out.data());
    benchmark::ClobberMemory();
    pass_total += thread_seconds() - start;
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(n * 2 * sizeof(float)));
  state.counters["pass_ms"] = 1e3 * pass_total / static_cast<double>(state.iterations());
  state.counters["x_two_passes"] = compress_total / (2.0 * pass_total);
}

void BM_OneBitMemoryPass(benchmark::State& state) {
  gradcomm::bench::run_memory_pass(state, static_cast<std::size_t>(state.range(0)), 2, 1);
}

// 25,557,032: ResNet-50's parameter count; 100M: a large fused buffer.
BENCHMARK(BM_OneBitCompress)->Arg(25557032)->Arg(100000000)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_OneBitMemoryPass)->Arg(25557032)->Arg(100000000)->Unit(benchmark::kMillisecond);

}  // namespace
