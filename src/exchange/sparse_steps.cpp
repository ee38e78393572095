#include "exchange/sparse_steps.h"

#include <cstring>

#include "core/state_blob.h"
#include "gradcomm/error.h"

namespace gradcomm::detail {

namespace {
constexpr char kRegionsMagic[8] = {'g', 'c', 'S', 'p', 'R', 'g', 'n', '1'};
}

void SparseSteps::reset(std::size_t layers, int world_size, int rank, std::int64_t refresh_steps) {
  regions_.assign(layers, SparseRegions{});
  groups_.clear();
  used_ = 0;
  world_size_ = world_size;
  rank_ = rank;
  refresh_steps_ = refresh_steps;
}

void SparseSteps::begin_step(std::int64_t step) {
  step_ = step;
  used_ = 0;
}

std::size_t SparseSteps::add_group(std::span<const std::size_t> layers, std::span<const LayerSpec> specs,
                                   std::span<const LayerWire> wires) {
  if (used_ == groups_.size()) {
    groups_.emplace_back();
    groups_.back().exchange = std::make_unique<SparseAllreduceGroup>();
  }
  Group& g = groups_[used_];
  g.layers.assign(layers.begin(), layers.end());
  // Every rank decides alike: from the step and from regions every rank holds the same.
  g.refresh = refresh_steps_ > 0 && step_ % refresh_steps_ == 0;
  for (std::size_t layer : layers) {
    const SparseRegions& r = regions_[layer];
    if (r.world_size() != world_size_ || r.numel != specs[layer].numel || r.select != wires[layer].slots) {
      g.refresh = true;
    }
  }
  return used_++;
}

std::size_t SparseSteps::phases(std::size_t g) const { return groups_[g].refresh ? 4 : 3; }

bool SparseSteps::complete(std::size_t g) {
  SparseAllreduceGroup& group = *groups_[g].exchange;
  group.complete();
  return group.done();
}

std::vector<std::byte> SparseSteps::save() const {
  std::vector<std::byte> blob;
  StateBlobWriter w(blob);
  w.bytes(kRegionsMagic, sizeof kRegionsMagic);
  w.value<std::uint64_t>(static_cast<std::uint64_t>(world_size_));
  w.value<std::uint64_t>(regions_.size());
  for (const SparseRegions& r : regions_) {
    w.value<std::uint64_t>(r.numel);
    w.value<std::uint64_t>(r.select);
    w.value<std::uint64_t>(r.quotas.size());
    for (std::size_t b : r.bounds) w.value<std::uint64_t>(b);
    for (std::size_t q : r.quotas) w.value<std::uint64_t>(q);
  }
  return blob;
}

void SparseSteps::load(std::span<const std::byte> blob) {
  StateBlobReader r(blob, concat("sparse allreduce regions on rank ", rank_));
  char magic[sizeof kRegionsMagic];
  r.bytes(magic, sizeof magic, "the magic");
  GRADCOMM_CHECK(std::memcmp(magic, kRegionsMagic, sizeof kRegionsMagic) == 0, ErrorCode::kCorruptPayload,
                 "sparse allreduce regions on rank ", rank_, ": not a regions blob");
  const auto p = r.value<std::uint64_t>("the world size");
  const auto n = r.value<std::uint64_t>("the layer count");
  GRADCOMM_CHECK(p == static_cast<std::uint64_t>(world_size_) && n == regions_.size(), ErrorCode::kCorruptPayload,
                 "sparse allreduce regions on rank ", rank_, ": saved for ", p, " ranks and ", n,
                 " layers, this exchange has ", world_size_, " and ", regions_.size());
  std::vector<SparseRegions> loaded(regions_.size());
  for (SparseRegions& x : loaded) {
    x.numel = r.value<std::uint64_t>("a layer size");
    x.select = r.value<std::uint64_t>("a selection size");
    const auto ranks = r.value<std::uint64_t>("a region count");
    GRADCOMM_CHECK(ranks == 0 || ranks == p, ErrorCode::kCorruptPayload, "sparse allreduce regions on rank ", rank_,
                   ": ", ranks, " regions for ", p, " ranks");
    x.bounds.resize(ranks == 0 ? 0 : ranks + 1);
    x.quotas.resize(ranks);
    for (std::size_t& b : x.bounds) b = r.value<std::uint64_t>("a region bound");
    for (std::size_t& q : x.quotas) q = r.value<std::uint64_t>("a quota");
    for (std::size_t j = 0; j < ranks; ++j) {
      GRADCOMM_CHECK(x.bounds[j] <= x.bounds[j + 1] && x.bounds[ranks] == x.numel && x.bounds[0] == 0,
                     ErrorCode::kCorruptPayload, "sparse allreduce regions on rank ", rank_, ": bounds out of order");
    }
  }
  r.finish();
  regions_ = std::move(loaded);
}

}  // namespace gradcomm::detail
