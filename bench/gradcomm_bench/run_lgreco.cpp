// "lgreco-quant" and "lgreco-dgc": L-GreCo (include/gradcomm/lgreco.h) over the k-bit
// quantizer's bit widths or DGC's densities, through the Exchanger, with an LgrecoPlanner
// called on every rank after every exchange, as a trainer does. The uniform default c0 is
// --bits or --density (added to the library's candidates when it is not among them). DGC
// runs without warm-up, as the "dgc" runner does, so planning starts at step 0.
//
// Timing: every --lgreco-period F steps the compressor profiles one step and the planner
// agrees on the table (one allreduce) and solves the DP. Unless --lgreco-period is given,
// F puts one such step in the middle of each row's timed iterations (lgreco_period_for();
// two with -c 0 -w 0 and an even -n), so the time is that of -n steps with one re-plan: a
// trainer with the library's F = 100 pays it once per 100 steps, so with -n 20 the
// re-plan weighs 5x more here. Rank 0's note after each row gives the plan and the time
// spent profiling, agreeing and solving (with applying the plan). The benchmark's
// gradients are i.i.d. uniform, so a plan here reflects layer sizes and per-layer byte
// overheads, not a real model's differing sensitivities.
//
// -c bound: that of the plan in force for the checked step (the first of a fresh runner,
// so the default unless F = 1 re-planned after it), layer by layer: lgreco-quant, the
// quantizer's at the layer's bit width (run_quant.cpp); lgreco-dgc, DGC's |out-avg| < 1
// (run_dgc.cpp), whatever the density. Layers the family does not compress (1-D) are
// allreduced in fp32 and get fp32_average_bound().
#include <algorithm>
#include <cstdio>

#include "gradcomm/lgreco.h"
#include "gradcomm_bench/runner.h"

namespace gradcomm::bench {
namespace {

template <typename T>
void add_candidate(std::vector<T>& candidates, T value) {
  if (std::find(candidates.begin(), candidates.end(), value) != candidates.end()) return;
  candidates.insert(std::upper_bound(candidates.begin(), candidates.end(), value), value);
}

class LgrecoRunner final : public ExchangerRunner {
 public:
  LgrecoRunner(Communicator& comm, const LgrecoOptions& options, std::vector<LayerSpec> layers,
               const RunnerConfig& config)
      : ExchangerRunner(comm, std::make_unique<LgrecoCompressor>(options), std::move(layers), config,
                        options.family == LgrecoFamily::kQuantBits
                            // What holds for any plan; count_wrong() applies the one in force.
                            ? quantized_bound(*std::min_element(options.bit_widths.begin(), options.bit_widths.end()),
                                              comm.size())
                            : dgc_bound()),
        lgreco_(static_cast<LgrecoCompressor&>(exchanger().compressor())),
        planner_(comm, lgreco_),
        choice_in_step_(lgreco_.choice().begin(), lgreco_.choice().end()) {
    for (std::size_t l = 0; l < choice_in_step_.size(); ++l) {
      uniform_bytes_ += lgreco_.local_table().bytes_at(l, lgreco_.default_choice()[l]);
    }
  }

  void step(std::span<const TensorView> grads, std::span<const TensorView> outs) override {
    ExchangerRunner::step(grads, outs);
    // after_step() applies a new plan at once; -c must judge this step by the old one.
    std::copy(lgreco_.choice().begin(), lgreco_.choice().end(), choice_in_step_.begin());
    planner_.after_step();
  }

  std::size_t count_wrong(std::span<const TensorView> outs, const DenseReference& dense) const override {
    const LgrecoOptions& o = lgreco_.options();
    if (o.family == LgrecoFamily::kQuantBits) {
      std::vector<int> bits(outs.size(), 0);
      for (std::size_t l = 0; l < bits.size(); ++l) {
        if (lgreco_.is_planned(l)) bits[l] = o.bit_widths[choice_in_step_[l]];
      }
      return count_wrong_quantized(outs, dense, bits, o.quantize.bucket_size);
    }
    const CheckBound fp32 = fp32_average_bound(dense.world_size()), dgc = dgc_bound();
    std::size_t wrong = 0;
    std::uint64_t first = 0;
    for (std::size_t l = 0; l < outs.size(); ++l) {
      wrong += count_outside(outs[l].span<const float>("bench output"), first, dense,
                             lgreco_.is_planned(l) ? dgc : fp32);
      first += outs[l].numel();
    }
    return wrong;
  }

  std::string note() const override {
    const LgrecoPlannerStats& s = planner_.stats();
    const LgrecoPlan& plan = planner_.plan();
    // The planned layers' settings, run-length encoded: a model has hundreds of layers.
    std::string settings;
    std::size_t run = 0;
    for (std::size_t l = 0; s.replans > 0 && l < plan.choice.size(); ++l) {
      if (!lgreco_.is_planned(l)) continue;
      ++run;
      std::size_t next = l + 1;
      while (next < plan.choice.size() && !lgreco_.is_planned(next)) ++next;
      if (next < plan.choice.size() && plan.choice[next] == plan.choice[l]) continue;
      settings += (settings.empty() ? "" : ", ") + (run > 1 ? std::to_string(run) + " x " : std::string()) +
                  lgreco_.candidate_name(plan.choice[l]);
      run = 0;
    }
    char line[512];
    std::snprintf(line, sizeof line,
                  "%s: period %lld, %lld re-plan(s) in %lld steps; rank 0 spent %.2f ms profiling, %.2f ms in the "
                  "table's allreduce, %.2f ms solving and applying plans",
                  lgreco_.name().c_str(), static_cast<long long>(lgreco_.options().period),
                  static_cast<long long>(s.replans), static_cast<long long>(exchanger().step()),
                  1e3 * lgreco_.profile_seconds(), 1e3 * s.agree_seconds, 1e3 * s.solve_seconds);
    std::string out = line;
    if (s.replans > 0) {
      std::snprintf(line, sizeof line, "; last plan %llu B/step vs uniform %llu (x%.2f)%s: ",
                    static_cast<unsigned long long>(plan.bytes), static_cast<unsigned long long>(uniform_bytes_),
                    plan.bytes ? static_cast<double>(uniform_bytes_) / static_cast<double>(plan.bytes) : 0.0,
                    plan.fallback ? ", fallback to uniform" : "");
      out += line + settings;
    }
    return out;
  }

 private:
  LgrecoCompressor& lgreco_;  // owned by the Exchanger
  LgrecoPlanner planner_;
  std::vector<std::uint32_t> choice_in_step_;  // the candidate per layer in the last step
  std::uint64_t uniform_bytes_ = 0;            // per step at the default, by the plan's model
};

LgrecoOptions lgreco_options(const RunnerConfig& config, LgrecoFamily family) {
  LgrecoOptions o;
  o.family = family;
  o.period = config.lgreco_period;
  if (family == LgrecoFamily::kQuantBits) {
    o.default_bits = config.bits;
    add_candidate(o.bit_widths, config.bits);
  } else {
    o.default_density = config.density;
    add_candidate(o.densities, config.density);
    o.dgc.warmup_densities = {};
  }
  return o;
}

}  // namespace

std::unique_ptr<Runner> make_lgreco_quant_runner(Communicator& comm, std::vector<LayerSpec> layers,
                                                 const RunnerConfig& config) {
  return std::make_unique<LgrecoRunner>(comm, lgreco_options(config, LgrecoFamily::kQuantBits), std::move(layers),
                                        config);
}

std::unique_ptr<Runner> make_lgreco_dgc_runner(Communicator& comm, std::vector<LayerSpec> layers,
                                               const RunnerConfig& config) {
  return std::make_unique<LgrecoRunner>(comm, lgreco_options(config, LgrecoFamily::kDgcDensity), std::move(layers),
                                        config);
}

}  // namespace gradcomm::bench
