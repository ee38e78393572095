#include "cnn.h"

#include <algorithm>
#include <cmath>
#include <random>

namespace trainer {
namespace {

constexpr std::size_t kS = Cnn::kSide, kP = Cnn::kPadded, kPx = Cnn::kPixels;
constexpr std::size_t kPadPx = kP * kP;  // one padded channel plane

void he_init(std::vector<float>& w, std::size_t n, std::size_t fan_in, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, std::sqrt(2.0f / static_cast<float>(fan_in)));
  w.resize(n);
  for (float& v : w) v = normal(rng);
}

// acc[y][x] (8x8) += sum over the 3x3 kernel k of k[ky][kx] * in[y+ky][x+kx], `in` a
// zero-bordered 10x10 plane: a pad-1 convolution with no bounds checks.
void conv_plane(const float* in, const float* k, float* acc) {
  for (std::size_t ky = 0; ky < 3; ++ky)
    for (std::size_t kx = 0; kx < 3; ++kx) {
      const float w = k[ky * 3 + kx];
      for (std::size_t y = 0; y < kS; ++y) {
        const float* row = in + (y + ky) * kP + kx;
        float* out = acc + y * kS;
        for (std::size_t x = 0; x < kS; ++x) out[x] += w * row[x];
      }
    }
}

// The two gradients of conv_plane for the output gradient d (8x8): into the kernel's
// gradient kg and into the padded input's gradient din (10x10).
void conv_plane_backward(const float* in, const float* k, const float* d, float* kg, float* din) {
  for (std::size_t ky = 0; ky < 3; ++ky)
    for (std::size_t kx = 0; kx < 3; ++kx) {
      const float w = k[ky * 3 + kx];
      float sum = 0;
      for (std::size_t y = 0; y < kS; ++y) {
        const float* row = in + (y + ky) * kP + kx;
        float* drow = din ? din + (y + ky) * kP + kx : nullptr;
        const float* dy = d + y * kS;
        for (std::size_t x = 0; x < kS; ++x) {
          sum += dy[x] * row[x];
          if (drow) drow[x] += w * dy[x];
        }
      }
      kg[ky * 3 + kx] += sum;
    }
}

// out = W in + bias (W is n_out x n_in), through a ReLU when asked.
void dense_forward(const Cnn::Layer& l, const float* in, std::size_t n_in, std::size_t n_out, bool relu,
                   float* out) {
  for (std::size_t o = 0; o < n_out; ++o) {
    const float* w = &l.weight[o * n_in];
    float sum = l.bias[o];
    for (std::size_t k = 0; k < n_in; ++k) sum += w[k] * in[k];
    out[o] = relu ? std::max(sum, 0.0f) : sum;
  }
}

// One sample's share of a dense layer's gradients, and d_in += W^T d_out.
void dense_backward(Cnn::Layer& l, const float* in, const float* d_out, std::size_t n_in, std::size_t n_out,
                    float* d_in) {
  for (std::size_t o = 0; o < n_out; ++o) {
    const float g = d_out[o];
    if (g == 0.0f) continue;  // most of a ReLU layer's outputs are off
    l.bias_grad[o] += g;
    float* wg = &l.weight_grad[o * n_in];
    const float* w = &l.weight[o * n_in];
    for (std::size_t k = 0; k < n_in; ++k) {
      wg[k] += g * in[k];
      d_in[k] += g * w[k];
    }
  }
}

void zero(std::vector<float>& v, std::size_t n) {
  v.resize(n);
  std::fill(v.begin(), v.end(), 0.0f);
}

}  // namespace

Cnn::Cnn(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  he_init(conv1_.weight, kC1 * 9, 9, rng);
  he_init(conv2_.weight, kC2 * kC1 * 9, kC1 * 9, rng);
  he_init(fc1_.weight, kHidden * kPooled, kPooled, rng);
  he_init(fc2_.weight, kClasses * kHidden, kHidden, rng);
  conv1_.bias.assign(kC1, 0.0f);
  conv2_.bias.assign(kC2, 0.0f);
  fc1_.bias.assign(kHidden, 0.0f);
  fc2_.bias.assign(kClasses, 0.0f);
  for (Layer* l : {&conv1_, &conv2_, &fc1_, &fc2_}) {
    l->weight_grad.assign(l->weight.size(), 0.0f);
    l->bias_grad.assign(l->bias.size(), 0.0f);
  }
}

std::vector<Parameter> Cnn::parameters() {
  return {{"conv1.weight", &conv1_.weight, &conv1_.weight_grad, 4},
          {"conv1.bias", &conv1_.bias, &conv1_.bias_grad, 1},
          {"conv2.weight", &conv2_.weight, &conv2_.weight_grad, 4},
          {"conv2.bias", &conv2_.bias, &conv2_.bias_grad, 1},
          {"fc1.weight", &fc1_.weight, &fc1_.weight_grad, 2},
          {"fc1.bias", &fc1_.bias, &fc1_.bias_grad, 1},
          {"fc2.weight", &fc2_.weight, &fc2_.weight_grad, 2},
          {"fc2.bias", &fc2_.bias, &fc2_.bias_grad, 1}};
}

void Cnn::forward(const float* x, std::size_t batch, Workspace& ws) const {
  zero(ws.x, batch * kPadPx);
  zero(ws.a1, batch * kC1 * kPadPx);
  ws.a2.resize(batch * kC2 * kPx);
  ws.pooled.resize(batch * kPooled);
  ws.argmax.resize(batch * kPooled);
  ws.h.resize(batch * kHidden);
  ws.logits.resize(batch * kClasses);
  float acc[kPx];
  for (std::size_t b = 0; b < batch; ++b) {
    float* xp = &ws.x[b * kPadPx];
    for (std::size_t y = 0; y < kS; ++y)
      std::copy_n(x + b * kPx + y * kS, kS, xp + (y + 1) * kP + 1);

    for (std::size_t o = 0; o < kC1; ++o) {
      std::fill_n(acc, kPx, conv1_.bias[o]);
      conv_plane(xp, &conv1_.weight[o * 9], acc);
      float* a1 = &ws.a1[(b * kC1 + o) * kPadPx];
      for (std::size_t y = 0; y < kS; ++y)
        for (std::size_t xx = 0; xx < kS; ++xx) a1[(y + 1) * kP + xx + 1] = std::max(acc[y * kS + xx], 0.0f);
    }

    for (std::size_t o = 0; o < kC2; ++o) {
      std::fill_n(acc, kPx, conv2_.bias[o]);
      for (std::size_t i = 0; i < kC1; ++i)
        conv_plane(&ws.a1[(b * kC1 + i) * kPadPx], &conv2_.weight[(o * kC1 + i) * 9], acc);
      float* a2 = &ws.a2[(b * kC2 + o) * kPx];
      for (std::size_t j = 0; j < kPx; ++j) a2[j] = std::max(acc[j], 0.0f);
    }

    // 2x2 max-pool; the first maximum in scan order wins, so backward is deterministic.
    const float* a2 = &ws.a2[b * kC2 * kPx];
    for (std::size_t c = 0; c < kC2; ++c)
      for (std::size_t py = 0; py < kS / 2; ++py)
        for (std::size_t px = 0; px < kS / 2; ++px) {
          std::size_t best = c * kPx + 2 * py * kS + 2 * px;
          for (std::size_t dy = 0; dy < 2; ++dy)
            for (std::size_t dx = 0; dx < 2; ++dx) {
              const std::size_t at = c * kPx + (2 * py + dy) * kS + 2 * px + dx;
              if (a2[at] > a2[best]) best = at;
            }
          const std::size_t k = b * kPooled + c * (kS / 2) * (kS / 2) + py * (kS / 2) + px;
          ws.pooled[k] = a2[best];
          ws.argmax[k] = static_cast<std::uint32_t>(best);
        }

    dense_forward(fc1_, &ws.pooled[b * kPooled], kPooled, kHidden, true, &ws.h[b * kHidden]);
    dense_forward(fc2_, &ws.h[b * kHidden], kHidden, kClasses, false, &ws.logits[b * kClasses]);
  }
}

float Cnn::train_batch(const float* x, const int* labels, std::size_t batch,
                       const std::function<void(std::size_t)>& on_layer_ready) {
  forward(x, batch, ws_);
  for (Layer* l : {&conv1_, &conv2_, &fc1_, &fc2_}) {
    std::fill(l->weight_grad.begin(), l->weight_grad.end(), 0.0f);
    std::fill(l->bias_grad.begin(), l->bias_grad.end(), 0.0f);
  }
  const float inv_batch = 1.0f / static_cast<float>(batch);
  d_logits_.resize(batch * kClasses);
  float loss = 0;
  for (std::size_t b = 0; b < batch; ++b) {
    const float* z = &ws_.logits[b * kClasses];
    const float zmax = *std::max_element(z, z + kClasses);
    float denom = 0;
    for (std::size_t c = 0; c < kClasses; ++c) denom += std::exp(z[c] - zmax);
    for (std::size_t c = 0; c < kClasses; ++c) {
      const float prob = std::exp(z[c] - zmax) / denom;
      d_logits_[b * kClasses + c] = (prob - (static_cast<int>(c) == labels[b] ? 1.0f : 0.0f)) * inv_batch;
    }
    loss -= (z[labels[b]] - zmax) - std::log(denom);
  }

  // fc2, and the gradient into h through fc1's ReLU.
  zero(d_h_, batch * kHidden);
  for (std::size_t b = 0; b < batch; ++b) {
    const float* h = &ws_.h[b * kHidden];
    float* dh = &d_h_[b * kHidden];
    dense_backward(fc2_, h, &d_logits_[b * kClasses], kHidden, kClasses, dh);
    for (std::size_t k = 0; k < kHidden; ++k)
      if (h[k] <= 0.0f) dh[k] = 0.0f;
  }
  on_layer_ready(3);

  // fc1, and the gradient into the pooled features (the pool has no ReLU of its own).
  zero(d_pooled_, batch * kPooled);
  for (std::size_t b = 0; b < batch; ++b)
    dense_backward(fc1_, &ws_.pooled[b * kPooled], &d_h_[b * kHidden], kPooled, kHidden, &d_pooled_[b * kPooled]);
  on_layer_ready(2);

  // Un-pool to the winners, through conv2's ReLU; then conv2, and the gradient into a1.
  zero(d_a2_, batch * kC2 * kPx);
  for (std::size_t b = 0; b < batch; ++b)
    for (std::size_t k = 0; k < kPooled; ++k) {
      const std::size_t at = b * kC2 * kPx + ws_.argmax[b * kPooled + k];
      if (ws_.a2[at] > 0.0f) d_a2_[at] = d_pooled_[b * kPooled + k];
    }
  zero(d_a1_, batch * kC1 * kPadPx);
  for (std::size_t b = 0; b < batch; ++b)
    for (std::size_t o = 0; o < kC2; ++o) {
      const float* d = &d_a2_[(b * kC2 + o) * kPx];
      float bias_sum = 0;
      for (std::size_t j = 0; j < kPx; ++j) bias_sum += d[j];
      if (bias_sum == 0.0f && std::all_of(d, d + kPx, [](float v) { return v == 0.0f; })) continue;
      conv2_.bias_grad[o] += bias_sum;
      for (std::size_t i = 0; i < kC1; ++i)
        conv_plane_backward(&ws_.a1[(b * kC1 + i) * kPadPx], &conv2_.weight[(o * kC1 + i) * 9], d,
                            &conv2_.weight_grad[(o * kC1 + i) * 9], &d_a1_[(b * kC1 + i) * kPadPx]);
    }
  on_layer_ready(1);

  // Through conv1's ReLU (a zero border of a1 is never positive, so it is masked too).
  for (std::size_t j = 0; j < d_a1_.size(); ++j)
    if (ws_.a1[j] <= 0.0f) d_a1_[j] = 0.0f;
  float d[kPx];
  for (std::size_t b = 0; b < batch; ++b)
    for (std::size_t o = 0; o < kC1; ++o) {
      const float* dp = &d_a1_[(b * kC1 + o) * kPadPx];
      for (std::size_t y = 0; y < kS; ++y) std::copy_n(dp + (y + 1) * kP + 1, kS, d + y * kS);
      for (std::size_t j = 0; j < kPx; ++j) conv1_.bias_grad[o] += d[j];
      conv_plane_backward(&ws_.x[b * kPadPx], &conv1_.weight[o * 9], d, &conv1_.weight_grad[o * 9], nullptr);
    }
  on_layer_ready(0);
  return loss * inv_batch;
}

double Cnn::accuracy(const float* x, const int* labels, std::size_t n) const {
  Workspace ws;
  forward(x, n, ws);
  std::size_t correct = 0;
  for (std::size_t b = 0; b < n; ++b) {
    const float* z = &ws.logits[b * kClasses];
    correct += static_cast<int>(std::max_element(z, z + kClasses) - z) == labels[b];
  }
  return static_cast<double>(correct) / static_cast<double>(n);
}

}  // namespace trainer
