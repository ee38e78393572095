#include "gradcomm_bench/bench_options.h"

#include <cerrno>
#include <cstdlib>
#include <string_view>

#include "gradcomm_bench/models.h"

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
         "  -h, --help              this text\n";
}

namespace {

[[noreturn]] void bad_value(const std::string& flag, const std::string& value, const char* expected) {
  GRADCOMM_THROW(ErrorCode::kInvalidArgument, "gradcomm-bench: ", flag, " '", value, "': expected ", expected);
}

std::size_t parse_size(const std::string& flag, const std::string& value) {
  errno = 0;
  char* end = nullptr;
  const unsigned long long n = std::strtoull(value.c_str(), &end, 10);
  if (value.empty() || value[0] == '-' || end == value.c_str() || errno != 0) bad_value(flag, value, "a byte count");
  std::size_t scale = 1;
  const std::string_view suffix(end);
  if (suffix == "K" || suffix == "k") scale = 1ull << 10;
  else if (suffix == "M" || suffix == "m") scale = 1ull << 20;
  else if (suffix == "G" || suffix == "g") scale = 1ull << 30;
  else if (!suffix.empty()) bad_value(flag, value, "a byte count with an optional K, M or G suffix");
  if (n > SIZE_MAX / scale) bad_value(flag, value, "a byte count that fits in 64 bits");
  return static_cast<std::size_t>(n) * scale;
}

long long parse_int(const std::string& flag, const std::string& value, long long lo, long long hi) {
  errno = 0;
  char* end = nullptr;
  const long long n = std::strtoll(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || errno != 0 || n < lo || n > hi) {
    GRADCOMM_THROW(ErrorCode::kInvalidArgument, "gradcomm-bench: ", flag, " '", value, "': expected an integer in [",
                   lo, ", ", hi, "]");
  }
  return n;
}

double parse_double(const std::string& flag, const std::string& value) {
  errno = 0;
  char* end = nullptr;
  const double x = std::strtod(value.c_str(), &end);
  if (value.empty() || *end != '\0' || errno != 0) bad_value(flag, value, "a number");
  return x;
}

}  // namespace

BenchOptions parse_bench_options(int argc, char** argv, const std::string& default_models_dir,
                                 const std::string& default_link) {
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
      GRADCOMM_CHECK_ARG(i + 1 < argc, "gradcomm-bench: ", flag, " needs a value (see -h)");
      value = argv[++i];
    }
    if (flag == "-b" || flag == "--minbytes") o.min_bytes = parse_size(flag, value);
    else if (flag == "-e" || flag == "--maxbytes") o.max_bytes = parse_size(flag, value);
    else if (flag == "-i" || flag == "--stepbytes") o.step_bytes = parse_size(flag, value);
    else if (flag == "-f" || flag == "--stepfactor") o.step_factor = parse_double(flag, value);
    else if (flag == "-n" || flag == "--iters") o.iters = static_cast<int>(parse_int(flag, value, 1, 1 << 30));
    else if (flag == "-w" || flag == "--warmup_iters") o.warmup = static_cast<int>(parse_int(flag, value, 0, 1 << 30));
    else if (flag == "-c" || flag == "--check") o.check = parse_int(flag, value, 0, 1) == 1;
    else if (flag == "-a" || flag == "--average") o.time_across_ranks = static_cast<TimeAcrossRanks>(parse_int(flag, value, 0, 3));
    else if (flag == "--compressor") o.compressor = value;
    else if (flag == "--model") o.model = value;
    else if (flag == "--model-slice") {
      const std::size_t colon = value.find(':');
      if (colon == std::string::npos) bad_value(flag, value, "A:B");
      o.slice_first = static_cast<std::size_t>(parse_int(flag, value.substr(0, colon), 0, 1 << 30));
      o.slice_end = static_cast<std::size_t>(parse_int(flag, value.substr(colon + 1), 0, 1 << 30));
    }
    else if (flag == "--models-dir") o.models_dir = value;
    else if (flag == "--json") o.json_path = value;
    else if (flag == "--link") o.link = value;
    else if (flag == "--seed") o.seed = static_cast<std::uint64_t>(parse_int(flag, value, 0, INT64_MAX));
    else if (flag == "--density") o.runner.density = parse_double(flag, value);
    // The quantizer's widths (QuantizeOptions::bits).
    else if (flag == "--bits") o.runner.bits = static_cast<int>(parse_int(flag, value, 1, 8));
    else if (flag == "--lgreco-period") o.runner.lgreco_period = parse_int(flag, value, 1, 1 << 30);
    else if (flag == "--bucket-bytes") o.runner.bucket_bytes = parse_size(flag, value);
    else if (flag == "--exchange") o.runner.exchange = parse_exchange_choice(value);
    else if (flag == "--hierarchy") o.runner.hierarchy = parse_hierarchy(value);
    else if (flag == "--ranks-per-host") o.runner.ranks_per_host = static_cast<int>(parse_int(flag, value, 0, 1 << 20));
    else GRADCOMM_THROW(ErrorCode::kInvalidArgument, "gradcomm-bench: unknown flag '", flag, "' (see -h)");
  }
  if (o.help) return o;
  GRADCOMM_CHECK_ARG(o.min_bytes >= 4, "gradcomm-bench: -b ", o.min_bytes, " is below one float32 element (4 bytes)");
  GRADCOMM_CHECK_ARG(o.min_bytes <= o.max_bytes, "gradcomm-bench: -b ", o.min_bytes, " is larger than -e ", o.max_bytes);
  GRADCOMM_CHECK_ARG(o.step_factor == 0 || o.step_factor > 1, "gradcomm-bench: -f ", o.step_factor,
                     " must be greater than 1");
  GRADCOMM_CHECK_ARG(o.step_factor > 0 || o.step_bytes > 0 || o.min_bytes == o.max_bytes,
                     "gradcomm-bench: -i 0 would never get from -b to -e");
  GRADCOMM_CHECK_ARG(o.runner.density > 0 && o.runner.density <= 1, "gradcomm-bench: --density ", o.runner.density,
                     " must be in (0, 1]");
  if (o.runner.lgreco_period == 0) o.runner.lgreco_period = lgreco_period_for(o);
  GRADCOMM_CHECK_ARG(o.runner.bucket_bytes > 0, "gradcomm-bench: --bucket-bytes must be positive");
  GRADCOMM_CHECK_ARG(o.model.empty() || !o.models_dir.empty(), "gradcomm-bench: --model needs --models-dir");
  find_runner(o.compressor);  // rejects unknown and not-yet-built compressors before any work
  return o;
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
