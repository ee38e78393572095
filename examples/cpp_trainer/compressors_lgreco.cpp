// --compressor lgreco-quant | lgreco-dgc: L-GreCo over the quantizer's bit widths or DGC's
// densities, re-planned every 100 steps by an LgrecoPlanner run after each exchange. The
// uniform default of each family (c0) is --bits or --density.
#include <gradcomm/lgreco.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>

#include "compressors.h"

namespace trainer {
namespace {

// What the run spends on L-GreCo (profiling inside encode, the table's allreduce, the DP)
// against the wall time of the steps, printed at every re-plan by rank 0.
struct LgrecoRun {
  gradcomm::LgrecoCompressor* compressor = nullptr;
  std::unique_ptr<gradcomm::LgrecoPlanner> planner;
  std::chrono::steady_clock::time_point started;
  std::int64_t first_step = -1;
  bool quiet = false;
  std::string family;
  std::uint64_t uniform_bytes = 0;  // the plan table's bytes at the uniform default

  void after_step(gradcomm::Communicator& comm, std::int64_t step) {
    if (!planner) {
      planner = std::make_unique<gradcomm::LgrecoPlanner>(comm, *compressor);
      started = std::chrono::steady_clock::now();
      first_step = step;
    }
    if (!planner->after_step() || comm.rank() != 0 || quiet) return;
    const gradcomm::LgrecoPlan& plan = planner->plan();
    const gradcomm::LgrecoPlannerStats& stats = planner->stats();
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    const double overhead = compressor->profile_seconds() + stats.agree_seconds + stats.solve_seconds;
    std::string settings;
    for (std::size_t l = 0; l < plan.choice.size(); ++l) {
      if (!compressor->is_planned(l)) continue;
      settings += (settings.empty() ? "" : ", ") + compressor->candidate_name(plan.choice[l]);
    }
    std::printf("lgreco-%s: re-plan after step %lld: [%s]  plan %llu B/step vs uniform %llu B/step (x%.2f)%s"
                "  error %.4g <= budget %.4g  overhead %.2f ms = %.2f%% of %.1f ms of steps\n",
                family.c_str(), static_cast<long long>(step), settings.c_str(),
                static_cast<unsigned long long>(plan.bytes), static_cast<unsigned long long>(uniform_bytes),
                static_cast<double>(uniform_bytes) / static_cast<double>(plan.bytes),
                plan.fallback ? " (fallback: uniform)" : "", plan.error, plan.budget, 1e3 * overhead,
                100.0 * overhead / elapsed, 1e3 * elapsed);
    std::fflush(stdout);
  }
};

}  // namespace

CompressorSetup make_lgreco_compressor(const Options& options, std::size_t steps_per_epoch) {
  CompressorSetup setup;
  gradcomm::LgrecoOptions lgreco;
  lgreco.quantize = quantize_options(options);
  lgreco.default_bits = options.bits;
  lgreco.family = gradcomm::parse_lgreco_family(options.compressor.substr(std::string("lgreco-").size()));
  if (lgreco.family == gradcomm::LgrecoFamily::kDgcDensity) {
    // As --compressor dgc, with --density as the uniform default c0; planning starts once
    // the warm-up is over.
    lgreco.dgc = dgc_options(options);
    lgreco.default_density = options.density;
    lgreco.first_step = static_cast<std::int64_t>(gradcomm::dgc_warmup_epochs(lgreco.dgc) * steps_per_epoch);
    setup.compressor_has_momentum = true;
  }
  auto compressor = std::make_unique<gradcomm::LgrecoCompressor>(lgreco);
  auto run = std::make_shared<LgrecoRun>();
  run->compressor = compressor.get();
  run->quiet = options.quiet;
  run->family = gradcomm::lgreco_family_name(lgreco.family);
  setup.compressor = std::move(compressor);
  setup.after_step = [run](gradcomm::Communicator& comm, std::int64_t step) {
    if (run->uniform_bytes == 0) {
      const gradcomm::LgrecoTable& t = run->compressor->local_table();
      const auto defaults = run->compressor->default_choice();
      for (std::size_t l = 0; l < t.layers; ++l) run->uniform_bytes += t.bytes_at(l, defaults[l]);
    }
    run->after_step(comm, step);
  };
  return setup;
}

}  // namespace trainer
