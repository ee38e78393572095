// The floor every compressor kernel is judged against: a pass that reads and writes the
// given bytes per element, measured in the same binary.
#pragma once

#include <benchmark/benchmark.h>

#include <cstddef>
#include <vector>

namespace gradcomm::bench {

// Reads `reads` float arrays and writes `writes` float arrays of n elements once.
void run_memory_pass(benchmark::State& state, std::size_t n, int reads, int writes);

}  // namespace gradcomm::bench
