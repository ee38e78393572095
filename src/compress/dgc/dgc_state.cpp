// DgcCompressor: the momentum and residual it exposes, and its checkpoint blob (a CUDA
// layer's state is copied to and from its device: the blob is the same on both).

#include <bit>
#include <cstring>

#include "compress/dgc/dgc_device.h"
#include "core/state_blob.h"
#include "gradcomm/dgc.h"

namespace gradcomm {

namespace {

// Checkpoint blob: a fixed magic, then little fixed-size fields, then the arrays.
constexpr char kDgcStateMagic[8] = {'g', 'c', 'D', 'G', 'C', 's', 't', '1'};

}  // namespace

const DgcCompressor::Layer& DgcCompressor::host_copy(std::size_t layer) const {
  const Layer& l = layers_.at(layer);
  if (l.device != Device::kCuda) return l;
  host_copies_.resize(layers_.size());
  Layer& copy = host_copies_[layer];
  copy = l;  // the host-side fields; u, v and the thresholds come from the device
  kernels::dgc::ThresholdMemory memory;
  device_->copy_out(layer, copy.u, copy.v, memory);
  copy.threshold_cache = memory.last;
  copy.threshold_before = memory.before;
  return copy;
}

std::span<const float> DgcCompressor::momentum(std::size_t layer) const { return host_copy(layer).u; }
std::span<const float> DgcCompressor::residual(std::size_t layer) const { return host_copy(layer).v; }

const DgcLayerStats& DgcCompressor::last_stats(std::size_t layer) const {
  const Layer& l = layers_.at(layer);
  if (l.device != Device::kCuda) return l.stats;
  host_copies_.resize(layers_.size());
  const kernels::dgc::SearchStats s = device_->last_stats(layer);
  DgcLayerStats& stats = host_copies_[layer].stats;
  stats = {s.k, s.sent, s.candidates, std::bit_cast<float>(s.threshold), s.rounds};
  return stats;
}

std::vector<std::byte> DgcCompressor::save_state() const {
  std::vector<std::byte> blob;
  detail::StateBlobWriter w(blob);
  w.bytes(kDgcStateMagic, sizeof kDgcStateMagic);
  w.value<std::uint64_t>(static_cast<std::uint64_t>(epoch_));
  w.value<std::uint64_t>(static_cast<std::uint64_t>(step_));
  w.value<std::uint64_t>(layers_.size());
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const Layer& l = host_copy(i);
    w.value<std::uint64_t>(l.numel);
    w.value<std::uint64_t>(l.v.size());
    w.value<std::uint64_t>(l.rng_counter);
    w.value<std::uint64_t>(l.threshold_cache);
    w.value<std::uint64_t>(l.threshold_before);
    w.value<std::uint64_t>(l.sparse_momentum ? 1 : 0);
    w.bytes(l.u.data(), l.u.size() * sizeof(float));
    w.bytes(l.v.data(), l.v.size() * sizeof(float));
  }
  return blob;
}

void DgcCompressor::load_state(std::span<const std::byte> blob) {
  detail::StateBlobReader r(blob, detail::concat("DgcCompressor::load_state on rank ", rank_));
  char magic[sizeof kDgcStateMagic];
  r.bytes(magic, sizeof magic, "the magic");
  GRADCOMM_CHECK(std::memcmp(magic, kDgcStateMagic, sizeof kDgcStateMagic) == 0, ErrorCode::kCorruptPayload,
                 "DgcCompressor::load_state on rank ", rank_, ": not a DGC state blob");
  const auto epoch = static_cast<std::int64_t>(r.value<std::uint64_t>("the epoch"));
  const auto step = static_cast<std::int64_t>(r.value<std::uint64_t>("the step"));
  const std::uint64_t nlayers = r.value<std::uint64_t>("the layer count");
  GRADCOMM_CHECK(nlayers == layers_.size() && epoch >= 0 && step >= 0, ErrorCode::kCorruptPayload,
                 "DgcCompressor::load_state on rank ", rank_, ": blob has ", nlayers,
                 " layers (epoch ", epoch, ", step ", step, "), this compressor has ",
                 layers_.size());
  // Read into copies first so a truncated blob leaves the current state intact.
  std::vector<Layer> loaded = layers_;
  for (std::size_t i = 0; i < loaded.size(); ++i) {
    Layer& l = loaded[i];
    if (l.device == Device::kCuda) {  // read into host vectors, copied to the device below
      l.u.resize(l.numel);
      l.v.resize(l.dense_always ? 0 : l.numel);
    }
    const std::uint64_t numel = r.value<std::uint64_t>("a layer size");
    const std::uint64_t vsize = r.value<std::uint64_t>("a residual size");
    GRADCOMM_CHECK(numel == l.numel && vsize == l.v.size(), ErrorCode::kCorruptPayload,
                   "DgcCompressor::load_state on rank ", rank_, ": layer ", i, " has ", numel,
                   " elements and a residual of ", vsize, " in the blob, ", l.numel, " and ",
                   l.v.size(), " here");
    l.rng_counter = r.value<std::uint64_t>("an RNG counter");
    l.stats = {};
    l.threshold_cache = static_cast<std::uint32_t>(r.value<std::uint64_t>("a threshold"));
    l.threshold_before = static_cast<std::uint32_t>(r.value<std::uint64_t>("a threshold"));
    const std::uint64_t mode = r.value<std::uint64_t>("a layer mode");
    GRADCOMM_CHECK(mode <= 1 && (mode == 0 || !l.dense_always), ErrorCode::kCorruptPayload,
                   "DgcCompressor::load_state on rank ", rank_, ": layer ", i, " has mode ", mode);
    l.sparse_momentum = mode == 1;
    l.flushing = false;
    r.bytes(l.u.data(), l.u.size() * sizeof(float), "a momentum");
    r.bytes(l.v.data(), l.v.size() * sizeof(float), "a residual");
  }
  r.finish();
  for (std::size_t i = 0; i < loaded.size(); ++i) {
    Layer& l = loaded[i];
    if (l.device != Device::kCuda) continue;
    device_->copy_in(i, l.u, l.v, {l.threshold_cache, l.threshold_before});
    l.u = {};
    l.v = {};
  }
  layers_ = std::move(loaded);
  epoch_ = epoch;
  step_ = step;
}

}  // namespace gradcomm
