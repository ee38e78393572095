// L-GreCo (Markov et al., MLSys 2024): per-layer compression levels chosen by dynamic
// programming (docs/algorithms/lgreco.md).
//
// Every `period` steps each rank measures, for each layer and candidate setting, the bytes
// the layer would put on the wire and the L2 error the setting would make on the layer's
// error-fed gradient. The error table is averaged across ranks with one allreduce, and
// every rank solves the same multiple-choice knapsack (minimum bytes with total error at
// most that of the uniform default), so all ranks reach the same plan without a broadcast.
// The plan takes effect from the next step; residuals and momenta are kept.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "gradcomm/communicator.h"
#include "gradcomm/compressor.h"
#include "gradcomm/dgc.h"
#include "gradcomm/quantize.h"

namespace gradcomm {

// ---- the knapsack --------------------------------------------------------------------------

// bytes and L2 error of every (layer, candidate), row-major: [layer * candidates + c].
// A non-finite error excludes that candidate for that layer.
struct LgrecoTable {
  std::size_t layers = 0;
  std::size_t candidates = 0;
  std::vector<std::uint64_t> bytes;
  std::vector<double> error;

  LgrecoTable() = default;
  LgrecoTable(std::size_t layers, std::size_t candidates)
      : layers(layers), candidates(candidates), bytes(layers * candidates), error(layers * candidates) {}
  std::uint64_t& bytes_at(std::size_t l, std::size_t c) { return bytes[l * candidates + c]; }
  double& error_at(std::size_t l, std::size_t c) { return error[l * candidates + c]; }
  std::uint64_t bytes_at(std::size_t l, std::size_t c) const { return bytes[l * candidates + c]; }
  double error_at(std::size_t l, std::size_t c) const { return error[l * candidates + c]; }
};

struct LgrecoPlan {
  std::vector<std::uint32_t> choice;  // candidate index per layer
  std::uint64_t bytes = 0;            // total bytes of the plan
  double error = 0;                   // total error of the plan (layers planned)
  double budget = 0;                  // total error of the default (layers planned)
  std::int64_t bins_used = 0;         // binned error of the plan (<= bins unless fallback)
  std::size_t pinned = 0;             // layers kept at the default: their default is non-finite
  bool fallback = false;              // nothing under the binned budget beat the default
};

// The error bins of one entry: ceil(error / (budget / bins)), or -1 when the entry is
// excluded (non-finite, or more than the whole budget). With budget 0 only exact (0-error)
// entries fit. Binning rounds up, so a plan within `bins` bins is within the real budget.
std::int64_t lgreco_error_bins(double error, double budget, int bins);

// Multiple-choice knapsack by dynamic programming over the binned error, O(layers *
// candidates * bins) time, grow-only workspace (reuse one solver across re-plans).
// Deterministic: the same table gives the same plan on every rank (ties go to the lower
// candidate index, then to the smaller binned error).
class LgrecoKnapsack {
 public:
  // default_choice: c0 per layer. Layers whose default error is non-finite are pinned to
  // it and left out of the budget. If no plan fits the binned budget, or the best one
  // sends more bytes than the default, the default is returned (fallback = true).
  const LgrecoPlan& solve(const LgrecoTable& table, std::span<const std::uint32_t> default_choice,
                          int bins);

 private:
  LgrecoPlan plan_;
  std::vector<std::uint64_t> prev_, cur_;
  std::vector<std::uint8_t> choice_;  // [planned layer][bin]
  std::vector<std::int64_t> bins_;    // [layer][candidate]
  std::vector<std::size_t> planned_;
};

// ---- the L-GreCo compressor ----------------------------------------------------------------

// DGC family profiling: the L2 error ||x - topk_k(x)|| of keeping the k = ceil(d * n)
// (at least 1) largest |x| for every density d, all from one pass over x and one sorted
// strided sample of at most `sample` elements (every element when n <= sample: exact):
//   err(d)^2 = sum x^2 - (n / s) * (sum of the squares of the top k*s/n sample elements),
// interpolating the last, fractional, sample element. `workspace` grows as needed.
void lgreco_topk_errors(std::span<const float> x, std::span<const double> densities, std::size_t sample,
                        std::span<double> errors, std::vector<float>& workspace);

enum class LgrecoFamily : std::uint8_t {
  kQuantBits,   // QuantizeCompressor bit widths
  kDgcDensity,  // DgcCompressor densities
};
const char* lgreco_family_name(LgrecoFamily family) noexcept;
LgrecoFamily parse_lgreco_family(const std::string& name);  // "quant" or "dgc"

struct LgrecoOptions {
  LgrecoFamily family = LgrecoFamily::kQuantBits;
  std::vector<int> bit_widths = {2, 3, 4, 5, 6, 8};
  int default_bits = 4;  // c0 of the quantization family; must be among bit_widths
  std::vector<double> densities = {0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05};
  double default_density = 0.001;  // c0 of the DGC family; must be among densities
  // Re-plan every `period` steps (F): profile in steps period-1, 2*period-1, ...
  // counted from `first_step`, apply from the step after.
  std::int64_t period = 100;
  std::int64_t first_step = 0;  // no profiling before this step (e.g. DGC warm-up)
  // false: never profile, keep the uniform default for good (the baseline L-GreCo is
  // measured against: same compressor, same wire format).
  bool adaptive = true;
  int bins = 10000;             // B of the DP
  // DGC family: the error of every density comes from one sorted sample of at most this
  // many |v| per layer (the whole layer when it is smaller: then exact).
  std::size_t dgc_sample = 16384;
  QuantizeOptions quantize;  // bucket, rounding, error feedback, seed; bits set per layer
  // All but the density, which is set per layer. Planned layers never switch to a dense
  // allreduce (dense_fallback is turned off for them): a switch would drop v.
  DgcOptions dgc;
};

namespace detail {
class LgrecoDevice;
}  // namespace detail

// Runs the chosen family's compressor with per-layer settings and profiles it every
// `period` steps. Pair it with an LgrecoPlanner, called after every step. A layer on a
// CUDA device is profiled there (norms, bucket errors, the sorted sample) with kernels on
// the ExecutionContext's stream, its row of the table kept on the device until
// local_table() asks for it (which waits for the device, once per profiling step). The
// layers of one device share the profiling scratch: keep them on the one stream.
class LgrecoCompressor final : public Compressor {
 public:
  explicit LgrecoCompressor(LgrecoOptions options = {});
  ~LgrecoCompressor() override;

  std::string name() const override;
  void setup(std::span<const LayerSpec> layers, int world_size, int rank) override;
  std::string settings_fingerprint() const override;
  std::size_t max_payload_bytes(std::size_t layer) const override;
  LayerWire wire(std::size_t layer) const override;
  EncodeResult encode(std::size_t layer, TensorView grad, TensorView payload) override;
  void decode(std::size_t layer, TensorView received, TensorView out) override;
  void on_step_skipped(std::size_t layer, TensorView own_payload) override;
  void set_execution(const ExecutionContext& context) override;
  void set_step(std::int64_t step) override;
  void set_epoch(std::int64_t epoch) override;
  std::vector<std::byte> save_state() const override;
  void load_state(std::span<const std::byte> blob) override;

  const LgrecoOptions& options() const noexcept { return options_; }
  std::size_t num_candidates() const;
  std::string candidate_name(std::size_t c) const;  // "4 bits", "density 0.001"
  // Whether `step` is a profiling step.
  bool profiles_step(std::int64_t step) const;
  // The table measured in the last profiling step on this rank (every layer; layers that
  // are not planned have all-equal bytes and zero error), and whether it is complete and
  // not yet consumed by a planner.
  const LgrecoTable& local_table() const;
  bool table_ready() const noexcept;
  void consume_table() noexcept { table_layers_done_ = 0; }
  // Whether a layer takes part in planning (compressed by the family at all).
  bool is_planned(std::size_t layer) const;
  std::span<const std::uint32_t> default_choice() const noexcept { return default_choice_; }
  // The per-layer candidate indices in force; apply_plan() changes them for the next
  // encode (residuals and momenta are kept). Must be called identically on every rank.
  std::span<const std::uint32_t> choice() const noexcept { return choice_; }
  void apply_plan(std::span<const std::uint32_t> choice);
  double profile_seconds() const noexcept { return profile_seconds_; }  // cumulative

  // The inner compressor, which holds every layer: the quantizer (quant family; the plan
  // sets per-layer bit widths) or DGC (DGC family; per-layer densities). Null for the
  // other family.
  QuantizeCompressor* quantizer() noexcept { return quant_.get(); }
  DgcCompressor* dgc() noexcept { return dgc_.get(); }

 private:
  bool quant_family() const noexcept { return options_.family == LgrecoFamily::kQuantBits; }
  Compressor& inner() const;
  void profile(std::size_t layer, TensorView grad);
  void profile_on_host(std::size_t layer, const float* grad);
  void profile_on_device(std::size_t layer, TensorView grad);

  LgrecoOptions options_;
  std::unique_ptr<QuantizeCompressor> quant_;
  std::unique_ptr<DgcCompressor> dgc_;
  std::vector<LayerSpec> layers_;
  std::vector<char> planned_;
  std::vector<std::uint32_t> default_choice_, choice_;
  mutable LgrecoTable table_;
  std::size_t table_layers_done_ = 0;
  std::int64_t table_step_ = -1;  // the step the table was measured in
  std::vector<char> profiled_;     // by layer, in table_step_
  std::int64_t step_ = 0;
  int world_size_ = 1;
  int rank_ = 0;
  double profile_seconds_ = 0;
  // Profiling scratch, sized at setup for the largest layer (grow-only).
  std::vector<float> scratch_, mins_, maxs_, sample_;
  // The planned CUDA layers' profiling (null without any), and the rows it computed that
  // table_ does not hold yet.
  std::unique_ptr<detail::LgrecoDevice> device_;
  ExecutionContext execution_;
  mutable std::vector<std::size_t> device_rows_;
};

struct LgrecoPlannerStats {
  std::int64_t replans = 0;
  std::int64_t changed_layers = 0;  // layers whose setting changed, summed over re-plans
  double agree_seconds = 0;         // the allreduce of the table
  double solve_seconds = 0;         // the DP
};

// Agrees on the table and solves it. after_step() must be called on every rank after every
// Exchanger::finish_step() (it only communicates on profiling steps, identically on all
// ranks, so the collective order stays the same everywhere).
class LgrecoPlanner {
 public:
  LgrecoPlanner(Communicator& comm, LgrecoCompressor& compressor);
  // Returns true when it re-planned (the new plan applies from the next step).
  bool after_step();
  const LgrecoPlan& plan() const noexcept { return knapsack_plan_; }
  const LgrecoTable& agreed_table() const noexcept { return agreed_; }
  const LgrecoPlannerStats& stats() const noexcept { return stats_; }

 private:
  Communicator& comm_;
  LgrecoCompressor& compressor_;
  LgrecoKnapsack knapsack_;
  LgrecoTable agreed_;
  LgrecoPlan knapsack_plan_;
  std::vector<float> errors_;  // the allreduce buffer
  LgrecoPlannerStats stats_;
};

}  // namespace gradcomm
