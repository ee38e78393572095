// What the trainer needs from a network, so that --model picks one without the training
// loop knowing which: its parameter tensors (with their real ndim, which the compressors
// and L-GreCo see) and a train step that reports each layer's gradients as soon as
// backward has finished them.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "training.h"

namespace trainer {

class Model {
 public:
  virtual ~Model() = default;
  // Layer l owns parameters 2l (weight) and 2l+1 (bias); the pointers stay valid for the
  // model's lifetime.
  virtual std::vector<Parameter> parameters() = 0;
  // Forward and backward over `batch` samples of 64 features; fills every gradient
  // (averaged over the batch), calls on_layer_ready(l) as soon as layer l's gradients are
  // complete, last layer first, and returns the mean cross-entropy loss.
  virtual float train_batch(const float* x, const int* labels, std::size_t batch,
                            const std::function<void(std::size_t)>& on_layer_ready) = 0;
  virtual double accuracy(const float* x, const int* labels, std::size_t n) const = 0;
};

// --model mlp (widths 64, options.hidden..., 10) or cnn; the same seed gives the same
// parameters on every rank. Throws std::invalid_argument for an unknown name.
std::unique_ptr<Model> make_model(const Options& options);

// About the bytes one rank holds for `options` (for a check before anything is allocated):
// per parameter at most 10 floats (value, gradient, optimizer and compressor state,
// exchange buffers), plus the activations of the larger of a batch and the test set.
double estimated_bytes_per_rank(const Options& options);

}  // namespace trainer
