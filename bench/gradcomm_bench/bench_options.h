// gradcomm-bench's command line: nccl-tests' flags plus the compressor's.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "gradcomm_bench/runner.h"

namespace gradcomm::bench {

// How the per-rank times become the reported one (nccl-tests' -a).
enum class TimeAcrossRanks : int { kRank0 = 0, kAverage = 1, kMin = 2, kMax = 3 };
const char* time_across_ranks_name(TimeAcrossRanks how) noexcept;

struct BenchOptions {
  // nccl-tests' flags and defaults, except -a (nccl-tests reports the average over ranks;
  // we report the slowest rank, which is what a synchronous training step waits for).
  std::size_t min_bytes = 32u << 20;  // -b
  std::size_t max_bytes = 32u << 20;  // -e
  std::size_t step_bytes = 1u << 20;  // -i: additive step, used when -f is not given
  double step_factor = 0;             // -f: multiplicative step (0: use -i)
  int iters = 20;                     // -n
  int warmup = 1;                     // -w
  bool check = true;                  // -c
  TimeAcrossRanks time_across_ranks = TimeAcrossRanks::kMax;  // -a

  std::string compressor = "none";  // --compressor
  std::string device = "cpu";       // --device: cpu | cuda (the row's buffers on the local GPU)
  std::string model;                // --model: exchange a real model's layers instead of a sweep
  // --model-slice A:B: only tensors [A, B) of the model (a model too large for this
  // machine's memory runs in parts; their bytes add up). B = 0: to the end.
  std::size_t slice_first = 0, slice_end = 0;
  std::string models_dir;           // --models-dir: where <model>.txt tables are
  std::string json_path;            // --json FILE
  std::string link;                 // --link: a label for the JSON rows (default: set by bench/netem/run)
  std::uint64_t seed = 1;           // --seed: of the generated gradients
  // --timeout: the watchdog of every collective (MpiCommunicatorOptions::collective_timeout).
  // The longest legitimate wait is one collective of the largest row on a slow link: a
  // dense ring allreduce of BERT-large (1.34 GB) sends about 2.3 GB per rank, 40 s at
  // bench/netem's 500 Mbit/s and several times that where ranks share a host's link; the
  // -c check of such a row adds seconds on the slowest rank. 300 s covers these, and a
  // stopped peer still ends the job in 5 minutes. Larger rows on slower links need a
  // larger --timeout (0: wait forever).
  std::chrono::milliseconds timeout{kDefaultTimeout};
  static constexpr std::chrono::milliseconds kDefaultTimeout{300'000};
  RunnerConfig runner;
  bool help = false;                // -h
};

// Parses and checks argv on this rank alone; throws gradcomm::Error (kInvalidArgument) or
// std::invalid_argument naming the flag for anything malformed, out of range, NaN or
// overflowing. `default_link` fills `link` when --link is absent.
BenchOptions parse_bench_options(int argc, char** argv, const std::string& default_models_dir,
                                 const std::string& default_link);

std::string bench_usage();

// L-GreCo's period when --lgreco-period is absent: the one that puts a profiling step, and
// the re-plan after it, in the middle of each row's timed iterations (-c and -w steps come
// first), so that every row's time includes a re-plan and the steps after it run the new
// plan. One re-plan, except with -c 0 -w 0 and an even -n: then the last step is a second.
std::int64_t lgreco_period_for(const BenchOptions& options);

// The message sizes of a sweep (bytes, multiples of 4), from -b, -e, -f / -i.
std::vector<std::size_t> sweep_sizes(const BenchOptions& options);

// How many rows -b, -e, -f / -i make (at least; computed without making them), and the
// most a sweep may have: more is a typo (-i 4 up to -e 1G), not a benchmark.
double sweep_rows(const BenchOptions& options);
inline constexpr double kMaxSweepRows = 1000;

// What every rank must agree on: every flag that changes which collectives run or what
// they carry (launch/settings.h), and the --model table read. Not here: --json, --link
// (rank 0's output only) and --models-dir (the table's fingerprint instead).
std::string bench_settings(const BenchOptions& options, const std::string& model_fingerprint);

}  // namespace gradcomm::bench
