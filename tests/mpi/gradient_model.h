// The gradients of the multi-rank DGC tests: a pure function of (rank, step, layer,
// element), so every rank can build every other rank's gradient and compute the expected
// result locally; and the per-layer buffers an Exchanger reads and writes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "gradcomm/layer.h"
#include "gradcomm/tensor.h"

namespace gradcomm::testing {

inline float grad_value(int rank, int step, std::size_t layer, std::size_t i) {
  std::uint64_t x = (static_cast<std::uint64_t>(rank) << 48) ^ (static_cast<std::uint64_t>(step) << 32) ^
                    (static_cast<std::uint64_t>(layer) << 24) ^ i;
  x = (x ^ (x >> 33)) * 0xff51afd7ed558ccdull;
  x = (x ^ (x >> 33)) * 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  // Uniform in [-1, 1), with a heavier tail on a few elements, as real gradients have.
  const float u = static_cast<float>(x >> 40) / static_cast<float>(1ull << 23) - 1.0f;
  return (x & 63) == 0 ? 8.0f * u : u;
}

struct Buffers {
  std::vector<std::vector<float>> grads, outs;
  std::vector<TensorView> grad_views, out_views;
  explicit Buffers(const std::vector<LayerSpec>& layers) {
    for (const LayerSpec& l : layers) {
      grads.emplace_back(l.numel);
      outs.emplace_back(l.numel);
    }
    for (std::size_t i = 0; i < layers.size(); ++i) {
      grad_views.push_back(TensorView::of(std::span<float>(grads[i])));
      out_views.push_back(TensorView::of(std::span<float>(outs[i])));
    }
  }
  void fill(int rank, int step) {
    for (std::size_t l = 0; l < grads.size(); ++l)
      for (std::size_t i = 0; i < grads[l].size(); ++i) grads[l][i] = grad_value(rank, step, l, i);
  }
};

// DGC's error-feedback ledger: what enters v this step from gradient g, momentum u (0.9)
// and residual v, before the encode: v + (Nesterov) m*(u + g) + g, or (plain) m*u + g.
// Summed over ranks, this minus the residual after the step is p times the update.
inline std::vector<float> dgc_ledger_input(std::span<const float> u, std::span<const float> v,
                                           std::span<const float> g, bool nesterov) {
  std::vector<float> in(g.size());
  for (std::size_t i = 0; i < g.size(); ++i) {
    const float un = nesterov ? 0.9f * (u[i] + g[i]) : 0.9f * u[i] + g[i];
    in[i] = v[i] + (nesterov ? un + g[i] : un);
  }
  return in;
}

}  // namespace gradcomm::testing
