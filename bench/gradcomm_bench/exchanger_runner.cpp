// The Runner every Exchanger-based compressor shares, and the elementwise -c check.
#include <algorithm>
#include <cmath>
#include <map>

#include "gradcomm_bench/runner.h"

namespace gradcomm::bench {

CheckBound fp32_average_bound(int world_size) {
  const double p = world_size, u = std::ldexp(1.0, -24);
  return {p * u, 4 * u, "fp32 sum of p values in [-1,1): |out-avg| <= p*2^-24 + 2^-22*|avg|"};
}

std::size_t count_outside(std::span<const float> out, std::uint64_t first, const DenseReference& dense,
                          const CheckBound& b) {
  std::size_t wrong = 0;
  for (const float v : out) {
    const double ref = dense(first++);
    // Written so that a NaN output counts as wrong.
    if (!(std::fabs(static_cast<double>(v) - ref) <= b.abs + b.rel * std::fabs(ref))) ++wrong;
  }
  return wrong;
}

std::size_t Runner::count_wrong(std::span<const TensorView> outs, const DenseReference& dense) const {
  const CheckBound b = bound();
  std::size_t wrong = 0;
  std::uint64_t first = 0;
  for (const TensorView& out : outs) {
    wrong += count_outside(out.span<const float>("bench output"), first, dense, b);
    first += out.numel();
  }
  return wrong;
}

namespace {
std::vector<LayerSpec> non_empty(std::vector<LayerSpec> layers) {
  GRADCOMM_CHECK_ARG(!layers.empty(), "gradcomm-bench: no layers to exchange");
  return layers;
}

ExchangerOptions exchanger_options(const RunnerConfig& config) {
  ExchangerOptions o;
  o.bucket_bytes = config.bucket_bytes;
  o.nonfinite = NonFinitePolicy::kError;
  o.exchange = config.exchange;
  o.hierarchy = config.hierarchy;
  o.verbose = config.print_plan;
  return o;
}
}  // namespace

ExchangerRunner::ExchangerRunner(Communicator& comm, std::unique_ptr<Compressor> compressor,
                                 std::vector<LayerSpec> layers, const RunnerConfig& config, CheckBound bound)
    : hosts_(config.hosts),
      exchanger_(comm, config.hosts, std::move(compressor), non_empty(std::move(layers)), exchanger_options(config)),
      bound_(std::move(bound)) {
  std::map<Collective, std::size_t> bytes;
  for (std::size_t layer = 0; layer < exchanger_.layers().size(); ++layer) {
    const LayerWire w = exchanger_.compressor().wire(layer);
    bytes[w.collective] += w.bytes();
  }
  collective_ = std::max_element(bytes.begin(), bytes.end(), [](const auto& a, const auto& b) {
                  return a.second < b.second;
                })->first;
  split_.allreduce = bytes[Collective::kAllreduce];
  split_.allgather = bytes[Collective::kAllgather];
  split_.sparse_allreduce = bytes[Collective::kSparseAllreduce];
}

std::uint64_t ExchangerRunner::bytes_sent_outside_communicator() const {
  if (!hosts_.given()) return 0;
  return hosts_.local->traffic().bytes_sent + hosts_.cross->traffic().bytes_sent;
}

std::string ExchangerRunner::plan_summary() const {
  const ExchangePlan& plan = exchanger_.plan();
  if (plan.predicted_seconds <= 0) return {};
  std::map<SparseExchange, std::size_t> count;
  for (SparseExchange e : plan.exchange) count[e] += 1;
  std::string out = plan.hierarchical ? "hierarchical" : "flat";
  const char* sep = ": ";
  for (const auto& [e, n] : count) {
    out += sep + std::to_string(n) + " " + sparse_exchange_name(e);
    sep = ", ";
  }
  return out;
}

std::uint64_t ExchangerRunner::bytes_sent_inside_host() const {
  return hosts_.given() ? hosts_.local->traffic().bytes_sent : 0;
}

void ExchangerRunner::step(std::span<const TensorView> grads, std::span<const TensorView> outs) {
  exchanger_.exchange(grads, outs);
}

std::unique_ptr<Runner> make_exchanger_runner(Communicator& comm, std::unique_ptr<Compressor> compressor,
                                              std::vector<LayerSpec> layers, const RunnerConfig& config,
                                              CheckBound bound) {
  return std::make_unique<ExchangerRunner>(comm, std::move(compressor), std::move(layers), config,
                                           std::move(bound));
}

}  // namespace gradcomm::bench
