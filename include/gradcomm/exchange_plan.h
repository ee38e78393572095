// Choosing how each layer crosses the ranks: dense ring, sparse allgather or sparse
// reduce-scatter (the sparse allreduce), each flat or hierarchical, by an alpha-beta model
// of the links measured at setup (docs/algorithms/sparse-allreduce.md, "Choosing").
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "gradcomm/compressor.h"
#include "gradcomm/layer.h"

namespace gradcomm {

class Communicator;

// What ExchangerOptions::exchange asks for.
enum class ExchangeChoice : std::uint8_t {
  kCompressor,     // as the compressor is set (DgcOptions::exchange): no plan
  kAuto,           // the cost model picks per layer
  kDense,          // every layer dense (a ring allreduce)
  kAllgather,      // every sparse-capable layer through the sparse allgather
  kReduceScatter,  // every sparse-capable layer through the sparse allreduce
};
const char* exchange_choice_name(ExchangeChoice choice) noexcept;
// "compressor", "auto", "dense", "allgather" or "reduce_scatter"; else kInvalidArgument.
ExchangeChoice parse_exchange_choice(const std::string& name);

// What ExchangerOptions::hierarchy asks for.
enum class Hierarchy : std::uint8_t {
  kFlat,          // one exchange over all ranks
  kHierarchical,  // dense sum inside each host, the exchange across hosts on 1/R shards, local allgather
  kAuto,          // the cost model picks (hierarchical only where the Exchanger has host communicators)
};
const char* hierarchy_name(Hierarchy hierarchy) noexcept;
Hierarchy parse_hierarchy(const std::string& name);  // "flat", "hierarchical" or "auto"

// One link class: a collective over q ranks moving b bytes through its busiest link takes
// about `steps` * alpha + b * beta (seconds).
struct LinkCost {
  double alpha = 0.0;  // seconds per message step
  double beta = 0.0;   // seconds per byte
};

// The links as measured at setup (identical on every rank: each number is the median over
// the ranks of their measurements, gathered by one allgather), and the shape of the world.
struct LinkModel {
  LinkCost world;  // collectives over all ranks (flat)
  LinkCost intra;  // inside a host (hierarchical: local reduce-scatter and allgather)
  LinkCost inter;  // between hosts (hierarchical: the exchange across hosts, R streams sharing a host's link)
  double seconds_per_element = 0.0;  // compute: one pass over a layer's float32 elements
  int world_size = 1;
  int hosts = 1;
  int ranks_per_host = 1;
};

// What measure_links samples. The bandwidth messages should be as large as what the plan
// will move over each link: on oversubscribed or shared-memory links the time per byte of
// a message of tens of megabytes can be several times that of a few megabytes.
struct LinkMeasureOptions {
  std::size_t bandwidth_bytes = std::size_t{4} << 20;        // world and across hosts
  std::size_t local_bandwidth_bytes = std::size_t{4} << 20;  // inside a host
  int repeats = 5;  // timed samples per size, after one untimed; their median counts
};

// Collective: times allreduces of 8 bytes and of the options' bandwidth sizes on `world`
// (and on `local` and `cross` where given, all ranks at once, as the hierarchical exchange
// would use them) and a pass over a local buffer, each the median of `repeats` samples,
// fits alpha and beta per link class, and takes the median of every number over all
// ranks. `local`/`cross` are null for a flat world. Every rank must pass the same options.
LinkModel measure_links(Communicator& world, Communicator* local, Communicator* cross,
                        const LinkMeasureOptions& options = {});

// What the model needs of one layer.
struct LayerCost {
  std::string name;
  std::size_t numel = 0;
  bool sparse_capable = false;  // the compressor can send it sparse
  std::size_t k = 0;            // entries per rank once warm-up is over
  std::size_t value_bytes = 4;  // of a sparse entry's value
  std::size_t dense_bytes = 4;  // of an element in a dense allreduce
};
// The layer costs of a DgcCompressor's settings (any other compressor: every layer dense,
// nothing to choose).
std::vector<LayerCost> layer_costs(const Compressor& compressor, std::span<const LayerSpec> layers);

inline constexpr std::size_t kExchangeOptions = 3;  // dense, allgather, reduce_scatter (in that order)

// Predicted seconds of one step's exchange of one layer: `exchange` on the flat world or
// hierarchically (R = model.ranks_per_host ranks per host), compute included.
// `region_refresh_steps` amortizes the sparse allreduce's histogram (0: never).
double predict_layer_seconds(const LinkModel& model, const LayerCost& layer, SparseExchange exchange,
                             bool hierarchical, std::int64_t region_refresh_steps);

struct ExchangePlan {
  bool hierarchical = false;
  std::vector<SparseExchange> exchange;  // by layer (kDense for layers that cannot go sparse)
  // By layer: predicted seconds of dense, allgather and reduce-scatter (0 for impossible
  // options) in the flat world and hierarchically.
  std::vector<std::array<double, kExchangeOptions>> flat_seconds, hierarchical_seconds;
  double predicted_seconds = 0.0;       // the plan's step total
  double flat_total = 0.0, hierarchical_total = 0.0;  // the best per-layer choices, each topology
  ExchangeChoice choice = ExchangeChoice::kCompressor;  // what was asked for
  LinkModel links;
  std::vector<std::string> names;  // by layer, for describe()

  // A table: the links, then per layer its size, the predicted milliseconds of each option
  // and the choice, then the totals.
  std::string describe() const;
  // As saved in a checkpoint (docs/wire-format.md, "Exchanger state") and back.
  std::vector<std::byte> save() const;
  static ExchangePlan load(std::span<const std::byte> blob);
};

// The plan: per layer the option `choice` forces, or under kAuto the fastest predicted one
// (ties to dense, then allgather); the topology `hierarchy` forces, or under kAuto the one
// whose layers add up to less (hierarchical only where `can_be_hierarchical`).
ExchangePlan plan_exchange(const LinkModel& model, std::span<const LayerCost> layers, ExchangeChoice choice,
                           Hierarchy hierarchy, bool can_be_hierarchical, std::int64_t region_refresh_steps);

}  // namespace gradcomm
