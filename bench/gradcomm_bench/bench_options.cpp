#include "gradcomm_bench/bench_options.h"

#include <cmath>
#include <limits>

#include "gradcomm_bench/models.h"
#include "launch/flags.h"
#include "launch/settings.h"

namespace gradcomm::bench {

const char* time_across_ranks_name(TimeAcrossRanks how) noexcept {
  switch (how) {
    case TimeAcrossRanks::kRank0: return "rank 0";
    case TimeAcrossRanks::kAverage: return "average over ranks";
    case TimeAcrossRanks::kMin: return "min over ranks";
    case TimeAcrossRanks::kMax: return "max over ranks";
  }
  return "unknown";
}

std::string bench_usage() {
  std::string compressors;
  for (const RunnerEntry& e : runner_table()) {
    compressors += std::string("      ") + e.name + (e.make ? "" : " (not built yet)") + ": " + e.summary + "\n";
  }
  return "usage: mpirun -np N gradcomm-bench [flags]\n"
         "  Every rank must be given the same flags: the ranks check that they agree before the first row.\n"
         "  -b, --minbytes SIZE     smallest message (default 32M; suffixes K, M, G are powers of 1024)\n"
         "  -e, --maxbytes SIZE     largest message (default 32M)\n"
         "  -f, --stepfactor F      multiply the size by F between rows\n"
         "  -i, --stepbytes SIZE    else add SIZE between rows (default 1M)\n"
         "  -n, --iters N           timed iterations per row (default 20)\n"
         "  -w, --warmup_iters N    untimed iterations before them (default 1)\n"
         "  -c, --check 0|1         check the first step against the exact dense average (default 1)\n"
         "  -a, --average 0|1|2|3   time reported: rank 0, average, min or max over ranks (default 3, max)\n"
         "  --compressor NAME       what to exchange with (default none):\n" +
         compressors +
         "  --device cpu|cuda       where the row's gradients and outputs live (default cpu); cuda: each rank\n"
         "                          takes its local GPU (OMPI_COMM_WORLD_LOCAL_RANK or LOCAL_RANK) and exchanges\n"
         "                          over NCCL when built with it, else MPI staging through pinned host memory\n"
         "                          (compressors none, fp16, dgc, dgc-fp16, quant)\n"
         "  --model NAME            exchange one step of a real model's layers (" + known_models() + ")\n"
         "  --models-dir DIR        where the <model>.txt layer tables are (default: the source tree's bench/models)\n"
         "  --model-slice A:B       only the model's tensors A to B-1 (B 0: to the end): a model too large for the\n"
         "                          machine's memory runs in parts whose bytes add up\n"
         "  --density D             dgc, dgc-fp16, lgreco-dgc: fraction of elements sent per layer, in (0, 1]\n"
         "                          (default 0.001; lgreco-dgc: the uniform default it plans against)\n"
         "  --bits B                quant, lgreco-quant: bits per element, 1 to 8 (default 4; lgreco-quant:\n"
         "                          the uniform default it plans against)\n"
         "  --lgreco-period F       lgreco-*: profile and re-plan every F steps (default: the F that puts one\n"
         "                          re-plan in the middle of each row's timed iterations)\n"
         "  --bucket-bytes SIZE     Exchanger fusion bucket (default 4M)\n"
         "  --exchange E            how sparse layers cross the ranks: compressor (as the compressor says),\n"
         "                          auto (the cost model picks per layer), dense, allgather, reduce_scatter\n"
         "                          (the sparse allreduce) (default compressor)\n"
         "  --hierarchy H           flat | hierarchical | auto (default flat): a dense sum inside each host,\n"
         "                          the exchange across hosts, a dense allgather inside each host\n"
         "  --ranks-per-host R      hosts of R consecutive ranks (default 0: the ranks sharing memory)\n"
         "  --json FILE             also write the rows as a JSON array (rank 0)\n"
         "  --link TEXT             label of the network in the JSON rows (bench/netem/run sets it)\n"
         "  --seed S                seed of the generated gradients (default 1)\n"
         "  --timeout SECONDS       a collective that has not completed after this long ends the job with an\n"
         "                          error naming it (a stopped or dead peer); 0 waits forever (default 300)\n"
         "  -h, --help              this text\n";
}

BenchOptions parse_bench_options(int argc, char** argv, const std::string& default_models_dir,
                                 const std::string& default_link) {
  using launch::parse_bytes;
  using launch::parse_integer;
  BenchOptions o;
  o.models_dir = default_models_dir;
  o.link = default_link;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i], value;
    bool inline_value = false;
    if (const auto eq = flag.find('='); flag.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
      inline_value = true;
    }
    if (flag == "-h" || flag == "--help") {
      o.help = true;
      continue;
    }
    if (!inline_value) {
      GRADCOMM_CHECK_ARG(i + 1 < argc, flag, " needs a value (see -h)");
      value = argv[++i];
    }
    if (flag == "-b" || flag == "--minbytes") o.min_bytes = parse_bytes(flag, value);
    else if (flag == "-e" || flag == "--maxbytes") o.max_bytes = parse_bytes(flag, value);
    else if (flag == "-i" || flag == "--stepbytes") o.step_bytes = parse_bytes(flag, value);
    else if (flag == "-f" || flag == "--stepfactor") o.step_factor = launch::parse_real(flag, value, {.lo = 0.0});
    else if (flag == "-n" || flag == "--iters") o.iters = static_cast<int>(parse_integer(flag, value, 1, 1 << 30));
    else if (flag == "-w" || flag == "--warmup_iters") o.warmup = static_cast<int>(parse_integer(flag, value, 0, 1 << 30));
    else if (flag == "-c" || flag == "--check") o.check = parse_integer(flag, value, 0, 1) == 1;
    else if (flag == "-a" || flag == "--average") o.time_across_ranks = static_cast<TimeAcrossRanks>(parse_integer(flag, value, 0, 3));
    else if (flag == "--compressor") o.compressor = value;
    else if (flag == "--device") o.device = value;
    else if (flag == "--model") o.model = value;
    else if (flag == "--model-slice") {
      const std::size_t colon = value.find(':');
      GRADCOMM_CHECK_ARG(colon != std::string::npos, flag, " '", value, "' is not of the form A:B");
      o.slice_first = static_cast<std::size_t>(parse_integer(flag, value.substr(0, colon), 0, 1 << 30));
      o.slice_end = static_cast<std::size_t>(parse_integer(flag, value.substr(colon + 1), 0, 1 << 30));
    }
    else if (flag == "--models-dir") o.models_dir = value;
    else if (flag == "--json") o.json_path = value;
    else if (flag == "--link") o.link = value;
    else if (flag == "--seed") o.seed = launch::parse_unsigned(flag, value);
    else if (flag == "--timeout") o.timeout = launch::parse_seconds(flag, value);
    else if (flag == "--density") o.runner.density = launch::parse_real(flag, value, {0.0, 1.0, true, false});
    // The quantizer's widths (QuantizeOptions::bits).
    else if (flag == "--bits") o.runner.bits = static_cast<int>(parse_integer(flag, value, 1, 8));
    else if (flag == "--lgreco-period") o.runner.lgreco_period = parse_integer(flag, value, 1, 1 << 30);
    else if (flag == "--bucket-bytes") o.runner.bucket_bytes = parse_bytes(flag, value);
    else if (flag == "--exchange") o.runner.exchange = parse_exchange_choice(value);
    else if (flag == "--hierarchy") o.runner.hierarchy = parse_hierarchy(value);
    else if (flag == "--ranks-per-host") o.runner.ranks_per_host = static_cast<int>(parse_integer(flag, value, 0, 1 << 20));
    else GRADCOMM_THROW(ErrorCode::kInvalidArgument, "unknown flag '", flag, "' (see -h)");
  }
  if (o.help) return o;
  GRADCOMM_CHECK_ARG(o.min_bytes >= 4, "-b ", o.min_bytes, " is below one float32 element (4 bytes)");
  GRADCOMM_CHECK_ARG(o.min_bytes <= o.max_bytes, "-b ", o.min_bytes, " is larger than -e ", o.max_bytes);
  GRADCOMM_CHECK_ARG(o.step_factor == 0 || o.step_factor > 1, "-f ", o.step_factor, " must be greater than 1");
  GRADCOMM_CHECK_ARG(o.step_factor > 0 || o.step_bytes > 0 || o.min_bytes == o.max_bytes,
                     "-i 0 would never get from -b to -e");
  const double rows = sweep_rows(o);
  GRADCOMM_CHECK_ARG(rows <= kMaxSweepRows, "-b ", o.min_bytes, " to -e ", o.max_bytes, " by ",
                     o.step_factor > 0 ? "-f " + launch::shortest(o.step_factor) : "-i " + std::to_string(o.step_bytes),
                     " makes ", launch::shortest(std::floor(rows)), " rows; at most ", kMaxSweepRows,
                     " (raise -f or -i)");
  if (o.runner.lgreco_period == 0) o.runner.lgreco_period = lgreco_period_for(o);
  GRADCOMM_CHECK_ARG(o.runner.bucket_bytes > 0, "--bucket-bytes must be positive");
  GRADCOMM_CHECK_ARG(o.model.empty() || !o.models_dir.empty(), "--model needs --models-dir");
  find_runner(o.compressor);  // rejects unknown and not-yet-built compressors before any work
  GRADCOMM_CHECK_ARG(o.device == "cpu" || o.device == "cuda", "--device '", o.device, "': expected cpu or cuda");
  if (o.device == "cuda") {
    // The runners whose whole exchange is the Exchanger's; the others call MPI or a
    // host-side planner of their own.
    const bool on_device = o.compressor == "none" || o.compressor == "fp16" || o.compressor == "dgc" ||
                           o.compressor == "dgc-fp16" || o.compressor == "quant";
    GRADCOMM_CHECK_ARG(on_device, "--device cuda with --compressor ", o.compressor,
                       ": runs on the host only (on the GPU: none, fp16, dgc, dgc-fp16, quant)");
    GRADCOMM_CHECK_ARG(o.runner.exchange == ExchangeChoice::kCompressor && o.runner.hierarchy == Hierarchy::kFlat,
                       "--device cuda takes the compressor's own exchange, flat (--exchange compressor "
                       "--hierarchy flat): the sparse allreduce and the planned exchanges run on the host only");
  }
  // The runner's own MPI_Allreduce takes an int count.
  GRADCOMM_CHECK_ARG(o.compressor != "mpi" || o.max_bytes / 4 <= static_cast<std::size_t>(INT32_MAX),
                     "-e ", o.max_bytes, " with --compressor mpi: over MPI's int count of floats (at most ",
                     4ull * INT32_MAX, " bytes)");
  return o;
}

double sweep_rows(const BenchOptions& o) {
  const double lo = static_cast<double>(o.min_bytes), hi = static_cast<double>(o.max_bytes);
  if (hi <= lo) return 1;
  if (o.step_factor > 0) return std::floor(std::log(hi / lo) / std::log(o.step_factor)) + 1;
  return o.step_bytes > 0 ? std::floor((hi - lo) / static_cast<double>(o.step_bytes)) + 1
                          : std::numeric_limits<double>::infinity();
}

std::string bench_settings(const BenchOptions& o, const std::string& model_fingerprint) {
  launch::SettingsText s;
  s.add("-b", o.min_bytes).add("-e", o.max_bytes).add("-i", o.step_bytes).add("-f", o.step_factor);
  s.add("-n", o.iters).add("-w", o.warmup).add("-c", o.check).add("-a", static_cast<int>(o.time_across_ranks));
  s.add("--compressor", o.compressor).add("--device", o.device).add("--model", o.model).add("model-table", model_fingerprint);
  s.add("--seed", o.seed).add("--density", o.runner.density).add("--bits", o.runner.bits);
  s.add("--lgreco-period", o.runner.lgreco_period).add("--bucket-bytes", o.runner.bucket_bytes);
  s.add("--exchange", exchange_choice_name(o.runner.exchange)).add("--hierarchy", hierarchy_name(o.runner.hierarchy));
  s.add("--ranks-per-host", o.runner.ranks_per_host);
  s.add("--model-slice", std::to_string(o.slice_first) + ":" + std::to_string(o.slice_end));
  return s.add("--timeout", static_cast<double>(o.timeout.count()) / 1e3).text();
}

std::int64_t lgreco_period_for(const BenchOptions& o) {
  // Steps 0 .. S-1, the timed ones the last n; profiling happens in step F-1, and
  // S - n <= F - 1 = S - n/2 - 1 <= S - 1 for every n >= 1.
  const std::int64_t steps = (o.check ? 1 : 0) + std::int64_t{o.warmup} + o.iters;
  return steps - o.iters / 2;
}

std::vector<std::size_t> sweep_sizes(const BenchOptions& o) {
  std::vector<std::size_t> sizes;
  for (double size = static_cast<double>(o.min_bytes); size <= static_cast<double>(o.max_bytes);) {
    const std::size_t bytes = static_cast<std::size_t>(size) / 4 * 4;
    if (sizes.empty() || sizes.back() != bytes) sizes.push_back(bytes);
    size = o.step_factor > 0 ? size * o.step_factor : size + static_cast<double>(o.step_bytes);
  }
  return sizes;
}

}  // namespace gradcomm::bench
