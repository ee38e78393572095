// The StepEngine's sparse allreduce groups (Collective::kSparseAllreduce layers): the
// regions of every layer, kept from step to step and refreshed every
// `region_refresh_steps`, and one SparseAllreduceGroup per group of the step, reused
// across steps so that steady-state steps do not allocate.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "gradcomm/compressor.h"
#include "gradcomm/layer.h"
#include "gradcomm/sparse_allreduce.h"
#include "sparse_allreduce/sparse_group.h"

namespace gradcomm::detail {

class SparseSteps {
 public:
  void reset(std::size_t layers, int world_size, int rank, std::int64_t refresh_steps);

  // A new step: no groups yet.
  void begin_step(std::int64_t step);
  // The step's next sparse group, of `layers` (layer numbers) with this step's wires.
  // Returns its number; phases(g) is then known (the same on every rank).
  std::size_t add_group(std::span<const std::size_t> layers, std::span<const LayerSpec> specs,
                        std::span<const LayerWire> wires);
  std::size_t phases(std::size_t g) const;

  // Starts group g on the encoded payloads (by layer number: `payload_of(layer)` and
  // `nonfinite_of(layer)`) and returns its first collective.
  template <typename PayloadOf, typename NonfiniteOf>
  SparsePhaseRequest start(std::size_t g, std::span<const LayerSpec> specs, std::span<const LayerWire> wires,
                           PayloadOf payload_of, NonfiniteOf nonfinite_of) {
    Group& group = groups_[g];
    scratch_.clear();
    for (std::size_t layer : group.layers) {
      SparseGroupLayer l;
      l.numel = specs[layer].numel;
      l.slots = wires[layer].slots;
      l.select = wires[layer].slots;
      l.value_dtype = wires[layer].value_dtype;
      l.payload = payload_of(layer);
      l.nonfinite = nonfinite_of(layer);
      l.regions = &regions_[layer];
      l.name = specs[layer].name.c_str();
      scratch_.push_back(l);
    }
    group.exchange->begin(world_size_, rank_, group.refresh, scratch_);
    return group.exchange->request();
  }
  SparsePhaseRequest next_request(std::size_t g) { return groups_[g].exchange->request(); }
  // The group's current phase completed; true when that was its last.
  bool complete(std::size_t g);

  SparseAllreduceGroup& group(std::size_t g) { return *groups_[g].exchange; }
  std::span<const std::size_t> layers_of(std::size_t g) const { return groups_[g].layers; }
  const SparseRegions& regions(std::size_t layer) const { return regions_.at(layer); }

  // The regions of every layer (identical on every rank), to save with a checkpoint, and
  // back; a blob for another model or world size is kCorruptPayload.
  std::vector<std::byte> save() const;
  void load(std::span<const std::byte> blob);

 private:
  struct Group {
    std::vector<std::size_t> layers;
    bool refresh = false;
    std::unique_ptr<SparseAllreduceGroup> exchange;
  };
  std::vector<SparseRegions> regions_;  // by layer
  std::vector<Group> groups_;           // grow-only; the first `used_` belong to this step
  std::size_t used_ = 0;
  std::vector<SparseGroupLayer> scratch_;
  int world_size_ = 1;
  int rank_ = 0;
  std::int64_t refresh_steps_ = 0;
  std::int64_t step_ = 0;
};

}  // namespace gradcomm::detail
