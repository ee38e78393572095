// DgcCompressor: the warm-up density schedule, per-layer densities, k, and the wire each
// layer uses at a density (sparse allgather or dense allreduce) with its payload size.

#include <algorithm>
#include <cmath>

#include "gradcomm/dgc.h"
#include "kernels/shared/dgc_math.h"

namespace gradcomm {

double DgcCompressor::scheduled_density(double after_warmup) const {
  const auto& w = options_.warmup_densities;
  if (static_cast<std::size_t>(epoch_) >= w.size()) return after_warmup;
  // The paper's schedule ends at 0.4%: with a higher target its last epochs would send
  // less than training does afterwards. Such epochs run at the target instead, here, so
  // that no caller edits the schedule (dgc.h).
  return std::max(w[static_cast<std::size_t>(epoch_)], after_warmup);
}

std::size_t dgc_warmup_epochs(const DgcOptions& options) {
  const auto& w = options.warmup_densities;
  std::size_t epochs = 0;
  for (std::size_t e = 0; e < w.size(); ++e) {
    if (w[e] > options.density) epochs = e + 1;
  }
  return epochs;
}

double DgcCompressor::density() const { return scheduled_density(options_.density); }

double DgcCompressor::density_of(const Layer& layer) const { return scheduled_density(layer.target); }

double DgcCompressor::layer_density(std::size_t layer) const { return density_of(layers_.at(layer)); }

void DgcCompressor::set_layer_density(std::size_t layer, double density) {
  GRADCOMM_CHECK_ARG(layer < layers_.size(), "DgcCompressor::set_layer_density: layer ", layer,
                     " out of range (", layers_.size(), " layers)");
  const double most = options_.max_layer_density > 0.0 ? options_.max_layer_density : options_.density;
  GRADCOMM_CHECK_ARG(density > 0.0 && density <= most, "DgcCompressor::set_layer_density: layer ", layer,
                     " density ", density, " outside (0, ", most, "] (raise max_layer_density)");
  layers_[layer].target = density;
}

std::size_t DgcCompressor::payload_bytes_at(std::size_t layer, double density) const {
  const Layer& l = layers_.at(layer);
  const std::size_t kk = k_for(l, density);
  return sparse_for(l, kk) ? sparse_payload_bytes(kk) : l.numel * dtype_size(options_.dense_dtype);
}

std::size_t DgcCompressor::k_for(const Layer& layer, double d) const {
  if (layer.numel == 0) return 0;
  const auto k = static_cast<std::size_t>(std::ceil(d * static_cast<double>(layer.numel)));
  return std::clamp<std::size_t>(k, 1, layer.numel);
}

bool DgcCompressor::sparse_for(const Layer& layer, std::size_t k) const {
  if (layer.dense_always || layer.exchange == SparseExchange::kDense) return false;
  if (!options_.dense_fallback) return true;
  if (layer.exchange == SparseExchange::kReduceScatter) {
    // Bytes each rank sends: about k entries to their owners and k kept sums (8 bytes)
    // to the others, against a ring allreduce's 2n elements, whatever p.
    return (4 + dtype_size(options_.value_dtype) + 8) * k <= 2 * dtype_size(options_.dense_dtype) * layer.numel;
  }
  // Bytes each rank receives: an allgather of k (index, value) slots from p ranks, against
  // a ring allreduce's 2n elements. With fp32 on both sides this is k/n <= 1/p.
  const std::size_t slot = 4 + dtype_size(options_.value_dtype);
  return slot * k * static_cast<std::size_t>(world_size_) <=
         2 * dtype_size(options_.dense_dtype) * layer.numel;
}

std::size_t DgcCompressor::sparse_payload_bytes(std::size_t k) const {
  return kernels::dgc::payload_bytes(k, options_.value_dtype == DType::kFloat16);
}

std::size_t DgcCompressor::k(std::size_t layer) const {
  const Layer& l = layers_.at(layer);
  return k_for(l, density_of(l));
}

bool DgcCompressor::is_sparse(std::size_t layer) const {
  const Layer& l = layers_.at(layer);
  return sparse_for(l, k_for(l, density_of(l)));
}

LayerWire DgcCompressor::wire(std::size_t layer) const {
  const Layer& l = layers_.at(layer);
  const std::size_t kk = k_for(l, density_of(l));
  if (!sparse_for(l, kk)) return {Collective::kAllreduce, options_.dense_dtype, l.numel};
  if (l.exchange == SparseExchange::kReduceScatter) {
    return {Collective::kSparseAllreduce, DType::kUInt8, sparse_payload_bytes(kk), kk, options_.value_dtype};
  }
  return {Collective::kAllgather, DType::kUInt8, sparse_payload_bytes(kk)};
}

std::size_t DgcCompressor::max_payload_bytes(std::size_t layer) const {
  const Layer& l = layers_.at(layer);
  std::size_t most = l.numel * dtype_size(options_.dense_dtype);
  // Whatever exchange the layer is given later (set_layer_exchange comes after the
  // Exchanger sized its workspace), so every layer that can go sparse counts its slots.
  auto consider = [&](double d) {
    if (!l.dense_always) most = std::max(most, sparse_payload_bytes(k_for(l, d)));
  };
  consider(options_.density);
  consider(options_.max_layer_density > 0.0 ? options_.max_layer_density : options_.density);
  for (double d : options_.warmup_densities) consider(d);
  return most;
}

void DgcCompressor::set_step(std::int64_t step) {
  step_ = step;
  if (options_.steps_per_epoch > 0) epoch_ = step / options_.steps_per_epoch;
}

void DgcCompressor::set_epoch(std::int64_t epoch) {
  GRADCOMM_CHECK_ARG(options_.steps_per_epoch == 0, "DgcCompressor::set_epoch(", epoch,
                     "): the warm-up follows the step (steps_per_epoch=", options_.steps_per_epoch,
                     "); set steps_per_epoch=0 to drive it by epoch");
  GRADCOMM_CHECK_ARG(epoch >= 0, "DgcCompressor::set_epoch: epoch ", epoch, " < 0");
  epoch_ = epoch;
}

}  // namespace gradcomm
