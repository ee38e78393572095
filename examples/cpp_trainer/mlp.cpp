#include "mlp.h"

#include <algorithm>
#include <cmath>
#include <random>

namespace trainer {

Mlp::Mlp(const std::vector<std::size_t>& widths, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (std::size_t l = 0; l + 1 < widths.size(); ++l) {
    Dense d;
    d.in = widths[l];
    d.out = widths[l + 1];
    std::normal_distribution<float> normal(0.0f, std::sqrt(2.0f / static_cast<float>(d.in)));
    d.weight.resize(d.in * d.out);
    for (float& w : d.weight) w = normal(rng);
    d.bias.assign(d.out, 0.0f);
    d.weight_grad.assign(d.weight.size(), 0.0f);
    d.bias_grad.assign(d.out, 0.0f);
    layers_.push_back(std::move(d));
  }
}

void Mlp::forward(const float* x, std::size_t batch, std::vector<std::vector<float>>& acts) const {
  acts.resize(layers_.size() + 1);
  acts[0].assign(x, x + batch * layers_[0].in);
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const Dense& d = layers_[l];
    std::vector<float>& out = acts[l + 1];
    out.resize(batch * d.out);
    const bool relu = l + 1 < layers_.size();
    for (std::size_t b = 0; b < batch; ++b) {
      const float* in = &acts[l][b * d.in];
      for (std::size_t o = 0; o < d.out; ++o) {
        const float* w = &d.weight[o * d.in];
        float sum = d.bias[o];
        for (std::size_t i = 0; i < d.in; ++i) sum += w[i] * in[i];
        out[b * d.out + o] = relu ? std::max(sum, 0.0f) : sum;
      }
    }
  }
}

float Mlp::train_batch(const float* x, const int* labels, std::size_t batch,
                       const std::function<void(std::size_t)>& on_layer_ready) {
  forward(x, batch, acts_);
  const std::size_t classes = layers_.back().out;
  const std::vector<float>& logits = acts_.back();
  delta_.resize(batch * classes);
  float loss = 0;
  for (std::size_t b = 0; b < batch; ++b) {
    const float* z = &logits[b * classes];
    const float zmax = *std::max_element(z, z + classes);
    float denom = 0;
    for (std::size_t c = 0; c < classes; ++c) denom += std::exp(z[c] - zmax);
    for (std::size_t c = 0; c < classes; ++c) {
      const float prob = std::exp(z[c] - zmax) / denom;
      delta_[b * classes + c] = (prob - (static_cast<int>(c) == labels[b] ? 1.0f : 0.0f)) / static_cast<float>(batch);
    }
    loss -= (z[labels[b]] - zmax) - std::log(denom);
  }
  for (std::size_t l = layers_.size(); l-- > 0;) {
    Dense& d = layers_[l];
    std::fill(d.weight_grad.begin(), d.weight_grad.end(), 0.0f);
    std::fill(d.bias_grad.begin(), d.bias_grad.end(), 0.0f);
    const std::vector<float>& in = acts_[l];
    for (std::size_t b = 0; b < batch; ++b) {
      for (std::size_t o = 0; o < d.out; ++o) {
        const float g = delta_[b * d.out + o];
        if (g == 0.0f) continue;
        d.bias_grad[o] += g;
        float* wg = &d.weight_grad[o * d.in];
        const float* a = &in[b * d.in];
        for (std::size_t i = 0; i < d.in; ++i) wg[i] += g * a[i];
      }
    }
    if (l > 0) {  // delta for the layer below, through its ReLU
      next_delta_.assign(batch * d.in, 0.0f);
      for (std::size_t b = 0; b < batch; ++b) {
        for (std::size_t o = 0; o < d.out; ++o) {
          const float g = delta_[b * d.out + o];
          if (g == 0.0f) continue;
          const float* w = &d.weight[o * d.in];
          float* nd = &next_delta_[b * d.in];
          for (std::size_t i = 0; i < d.in; ++i) nd[i] += g * w[i];
        }
        for (std::size_t i = 0; i < d.in; ++i)
          if (in[b * d.in + i] <= 0.0f) next_delta_[b * d.in + i] = 0.0f;
      }
      delta_.swap(next_delta_);
    }
    on_layer_ready(l);
  }
  return loss / static_cast<float>(batch);
}

double Mlp::accuracy(const float* x, const int* labels, std::size_t n) const {
  std::vector<std::vector<float>> acts;
  forward(x, n, acts);
  const std::size_t classes = layers_.back().out;
  std::size_t correct = 0;
  for (std::size_t b = 0; b < n; ++b) {
    const float* z = &acts.back()[b * classes];
    const auto best = static_cast<int>(std::max_element(z, z + classes) - z);
    correct += best == labels[b];
  }
  return static_cast<double>(correct) / static_cast<double>(n);
}

}  // namespace trainer
