// A multi-layer perceptron with ReLU hidden layers and a softmax cross-entropy head, in
// plain C++: enough model for data-parallel training to mean something, no framework.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace trainer {

struct Dense {
  std::size_t in = 0, out = 0;
  std::vector<float> weight, bias;            // out x in, out
  std::vector<float> weight_grad, bias_grad;  // same shapes
};

class Mlp {
 public:
  // widths: input, hidden..., classes. Initialization is He-normal from `seed`, so every
  // rank starts from the same parameters.
  Mlp(const std::vector<std::size_t>& widths, std::uint64_t seed);

  std::vector<Dense>& layers() { return layers_; }
  const std::vector<Dense>& layers() const { return layers_; }

  // Forward and backward over a batch (rows of x); fills the gradients (averaged over the
  // batch) and calls `on_layer_ready(l)` as soon as layer l's gradients are complete,
  // last layer first, so they can be exchanged while the rest of backward runs.
  // Returns the mean loss.
  float train_batch(const float* x, const int* labels, std::size_t batch,
                    const std::function<void(std::size_t)>& on_layer_ready);

  // Accuracy on n samples.
  double accuracy(const float* x, const int* labels, std::size_t n) const;

 private:
  void forward(const float* x, std::size_t batch, std::vector<std::vector<float>>& acts) const;
  std::vector<Dense> layers_;
  std::vector<std::vector<float>> acts_;  // reused between steps
  std::vector<float> delta_, next_delta_;
};

}  // namespace trainer
