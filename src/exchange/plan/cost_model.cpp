// The alpha-beta model of one layer's exchange, and the plan built from it
// (docs/algorithms/sparse-allreduce.md, "Choosing").
#include <algorithm>
#include <cmath>

#include "gradcomm/dgc.h"
#include "gradcomm/error.h"
#include "gradcomm/exchange_plan.h"
#include "gradcomm/sparse_allreduce.h"

namespace gradcomm {

const char* exchange_choice_name(ExchangeChoice choice) noexcept {
  switch (choice) {
    case ExchangeChoice::kCompressor: return "compressor";
    case ExchangeChoice::kAuto: return "auto";
    case ExchangeChoice::kDense: return "dense";
    case ExchangeChoice::kAllgather: return "allgather";
    case ExchangeChoice::kReduceScatter: return "reduce_scatter";
  }
  return "unknown";
}

ExchangeChoice parse_exchange_choice(const std::string& name) {
  for (ExchangeChoice c : {ExchangeChoice::kCompressor, ExchangeChoice::kAuto, ExchangeChoice::kDense,
                           ExchangeChoice::kAllgather, ExchangeChoice::kReduceScatter}) {
    if (name == exchange_choice_name(c)) return c;
  }
  GRADCOMM_THROW(ErrorCode::kInvalidArgument, "unknown exchange '", name,
                 "' (expected compressor, auto, dense, allgather or reduce_scatter)");
}

const char* hierarchy_name(Hierarchy hierarchy) noexcept {
  switch (hierarchy) {
    case Hierarchy::kFlat: return "flat";
    case Hierarchy::kHierarchical: return "hierarchical";
    case Hierarchy::kAuto: return "auto";
  }
  return "unknown";
}

Hierarchy parse_hierarchy(const std::string& name) {
  for (Hierarchy h : {Hierarchy::kFlat, Hierarchy::kHierarchical, Hierarchy::kAuto}) {
    if (name == hierarchy_name(h)) return h;
  }
  GRADCOMM_THROW(ErrorCode::kInvalidArgument, "unknown hierarchy '", name, "' (expected flat, hierarchical or auto)");
}

std::vector<LayerCost> layer_costs(const Compressor& compressor, std::span<const LayerSpec> layers) {
  const auto* dgc = dynamic_cast<const DgcCompressor*>(&compressor);
  std::vector<LayerCost> costs;
  for (const LayerSpec& spec : layers) {
    LayerCost c;
    c.name = spec.name;
    c.numel = spec.numel;
    if (dgc != nullptr) {
      const DgcOptions& o = dgc->options();
      c.sparse_capable = !is_dense_by_default(spec) && spec.numel > 0;
      c.k = spec.numel == 0 ? 0
                            : std::clamp<std::size_t>(
                                  static_cast<std::size_t>(std::ceil(o.density * static_cast<double>(spec.numel))),
                                  1, spec.numel);
      c.value_bytes = dtype_size(o.value_dtype);
      c.dense_bytes = dtype_size(o.dense_dtype);
    }
    costs.push_back(c);
  }
  return costs;
}

namespace {

// Ring allreduce over q ranks of `bytes`: 2(q-1) steps, 2(q-1)/q of the bytes per link.
double ring_allreduce(const LinkCost& c, int q, double bytes) {
  if (q <= 1) return 0.0;
  return 2.0 * (q - 1) * c.alpha + 2.0 * (q - 1) / q * bytes * c.beta;
}

// Ring allgather over q ranks of `block` bytes each: q-1 steps of one block.
double ring_allgather(const LinkCost& c, int q, double block) {
  if (q <= 1) return 0.0;
  return (q - 1) * (c.alpha + block * c.beta);
}

// Pairwise exchange among q ranks with `bytes` through the busiest link.
double exchange(const LinkCost& c, int q, double bytes) {
  if (q <= 1) return 0.0;
  return (q - 1) * c.alpha + bytes * c.beta;
}

// The sparse allreduce of k entries per rank among q ranks (the busiest link carrying
// `entry_share` of a rank's entries), per step, with the histogram amortized.
double sparse_allreduce_seconds(const LinkCost& c, int q, double k, double entry, double entry_share,
                                double numel, std::int64_t refresh) {
  if (q <= 1) return 0.0;
  double t = exchange(c, q, 8.0 * q);                       // counts
  t += exchange(c, q, k * entry * entry_share);             // entries
  t += exchange(c, q, 8.0 * k * (q - 1) / q);               // kept sums (allgatherv)
  if (refresh > 0) {
    const double bins = std::min(numel, 16.0 * q);
    t += ring_allreduce(c, q, 4.0 * bins) / static_cast<double>(refresh);
  }
  return t;
}

// Compute, in passes over float32 elements, a pass being what measure_links times: read one
// float and write one (8 bytes). A dense layer is copied in and scaled out (2 passes). A
// sparse one is accumulated in one fused pass that reads g, u and v, writes u and v and
// collects the candidates on the way (20 bytes: 2.5 passes), and its output is cleared
// before the entries are added (4 bytes: 0.5); the allgather's decode adds q k entries,
// the sparse allreduce's owner sorts its about k entries.
double compute_seconds(const LinkModel& m, SparseExchange e, double n, double k, int q) {
  const double c = m.seconds_per_element;
  switch (e) {
    case SparseExchange::kDense: return 2.0 * c * n;
    case SparseExchange::kAllgather: return c * (3.0 * n + q * k);
    case SparseExchange::kReduceScatter: return c * (3.0 * n + k * (std::log2(std::max(2.0, k)) + 2.0));
  }
  return 0.0;
}

}  // namespace

double predict_layer_seconds(const LinkModel& m, const LayerCost& layer, SparseExchange e, bool hierarchical,
                             std::int64_t refresh) {
  const double n = static_cast<double>(layer.numel);
  const double entry = 4.0 + static_cast<double>(layer.value_bytes);
  const double dense = static_cast<double>(layer.dense_bytes);
  if (!hierarchical) {
    const int p = m.world_size, hosts = std::max(1, m.hosts), r = std::max(1, m.ranks_per_host);
    const double k = static_cast<double>(layer.k);
    switch (e) {
      case SparseExchange::kDense: return ring_allreduce(m.world, p, n * dense) + compute_seconds(m, e, n, k, p);
      case SparseExchange::kAllgather:
        return ring_allgather(m.world, p, 4.0 + k * entry) + compute_seconds(m, e, n, k, p);
      case SparseExchange::kReduceScatter: {
        // A rank's entries for the other owners: (p-1)/p of them; where hosts share a
        // link, the R ranks of a host send (H-1)/H of theirs through it.
        const double share = std::max((p - 1.0) / p, r * (hosts - 1.0) / hosts);
        return sparse_allreduce_seconds(m.world, p, k, entry, share, n, refresh) + compute_seconds(m, e, n, k, p);
      }
    }
    return 0.0;
  }
  // Hierarchical: a dense reduce-scatter inside the host (float32), the exchange of a 1/R
  // shard across the H hosts (R such exchanges at once, as measured), a dense allgather
  // inside the host.
  const int r = std::max(1, m.ranks_per_host), hosts = std::max(1, m.hosts);
  const double shard = n / r;
  const double k = std::ceil(static_cast<double>(layer.k) / r);
  double t = exchange(m.intra, r, 4.0 * n * (r - 1) / r) + m.seconds_per_element * n;  // and the sum
  t += ring_allgather(m.intra, r, 4.0 * shard);
  switch (e) {
    case SparseExchange::kDense: t += ring_allreduce(m.inter, hosts, shard * dense); break;
    case SparseExchange::kAllgather: t += ring_allgather(m.inter, hosts, 4.0 + k * entry); break;
    case SparseExchange::kReduceScatter:
      t += sparse_allreduce_seconds(m.inter, hosts, k, entry, (hosts - 1.0) / hosts, shard, refresh);
      break;
  }
  return t + compute_seconds(m, e, shard, k, hosts);
}

namespace {

constexpr SparseExchange kOptions[kExchangeOptions] = {SparseExchange::kDense, SparseExchange::kAllgather,
                                                       SparseExchange::kReduceScatter};

// The option of one layer: forced, or the fastest (ties to the lower option).
std::size_t pick(const std::array<double, kExchangeOptions>& seconds, bool sparse_capable, ExchangeChoice choice) {
  if (!sparse_capable) return 0;
  switch (choice) {
    case ExchangeChoice::kDense: return 0;
    case ExchangeChoice::kAllgather: return 1;
    case ExchangeChoice::kReduceScatter: return 2;
    case ExchangeChoice::kAuto:
    case ExchangeChoice::kCompressor: break;
  }
  std::size_t best = 0;
  for (std::size_t i = 1; i < kExchangeOptions; ++i) {
    if (seconds[i] < seconds[best]) best = i;
  }
  return best;
}

}  // namespace

ExchangePlan plan_exchange(const LinkModel& model, std::span<const LayerCost> layers, ExchangeChoice choice,
                           Hierarchy hierarchy, bool can_be_hierarchical, std::int64_t refresh) {
  GRADCOMM_CHECK_ARG(hierarchy != Hierarchy::kHierarchical || can_be_hierarchical,
                     "plan_exchange: a hierarchical exchange needs host communicators (ranks per host and hosts)");
  ExchangePlan plan;
  plan.choice = choice;
  plan.links = model;
  const std::size_t n = layers.size();
  plan.flat_seconds.resize(n);
  plan.hierarchical_seconds.resize(n);
  std::vector<std::size_t> flat_pick(n), hier_pick(n);
  for (std::size_t l = 0; l < n; ++l) {
    const LayerCost& layer = layers[l];
    plan.names.push_back(layer.name);
    for (std::size_t i = 0; i < kExchangeOptions; ++i) {
      const bool possible = i == 0 || layer.sparse_capable;
      plan.flat_seconds[l][i] = possible ? predict_layer_seconds(model, layer, kOptions[i], false, refresh) : 0.0;
      plan.hierarchical_seconds[l][i] =
          possible && can_be_hierarchical ? predict_layer_seconds(model, layer, kOptions[i], true, refresh) : 0.0;
    }
    flat_pick[l] = pick(plan.flat_seconds[l], layer.sparse_capable, choice);
    hier_pick[l] = pick(plan.hierarchical_seconds[l], layer.sparse_capable, choice);
    plan.flat_total += plan.flat_seconds[l][flat_pick[l]];
    plan.hierarchical_total += plan.hierarchical_seconds[l][hier_pick[l]];
  }
  plan.hierarchical = hierarchy == Hierarchy::kHierarchical ||
                      (hierarchy == Hierarchy::kAuto && can_be_hierarchical &&
                       plan.hierarchical_total < plan.flat_total);
  const std::vector<std::size_t>& picked = plan.hierarchical ? hier_pick : flat_pick;
  for (std::size_t l = 0; l < n; ++l) plan.exchange.push_back(kOptions[picked[l]]);
  plan.predicted_seconds = plan.hierarchical ? plan.hierarchical_total : plan.flat_total;
  return plan;
}

}  // namespace gradcomm
