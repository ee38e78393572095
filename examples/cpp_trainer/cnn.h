// A small convolutional net for the 8x8 digits, in plain C++ with direct loops (the images
// are tiny, so no im2col): conv 3x3 1->16 (pad 1) + ReLU, conv 3x3 16->32 (pad 1) + ReLU,
// 2x2 max-pool, dense 512->64 + ReLU, dense 64->10, softmax cross-entropy. Its four
// weight tensors differ in shape and size by two orders of magnitude (144 to 32,768
// elements), which is what layer-wise compression (L-GreCo) needs to differ from uniform.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model.h"

namespace trainer {

class Cnn final : public Model {
 public:
  static constexpr std::size_t kSide = 8, kPadded = kSide + 2, kPixels = kSide * kSide;
  static constexpr std::size_t kC1 = 16, kC2 = 32, kPooled = kC2 * (kSide / 2) * (kSide / 2);
  static constexpr std::size_t kHidden = 64, kClasses = 10;

  // He-normal weights from `seed` (fan-in: in-channels x 9 for a conv), zero biases.
  explicit Cnn(std::uint64_t seed);

  // conv1.weight [16,1,3,3], conv1.bias, conv2.weight [32,16,3,3], conv2.bias,
  // fc1.weight [64,512], fc1.bias, fc2.weight [10,64], fc2.bias.
  std::vector<Parameter> parameters() override;
  float train_batch(const float* x, const int* labels, std::size_t batch,
                    const std::function<void(std::size_t)>& on_layer_ready) override;
  double accuracy(const float* x, const int* labels, std::size_t n) const override;

  struct Layer {
    std::vector<float> weight, bias, weight_grad, bias_grad;
  };

 private:
  // Activations of one forward pass, kept for backward; grown, never shrunk.
  struct Workspace {
    std::vector<float> x;       // B x 1 x 10 x 10, zero border
    std::vector<float> a1;      // B x 16 x 10 x 10, conv1 after ReLU, zero border
    std::vector<float> a2;      // B x 32 x 8 x 8, conv2 after ReLU
    std::vector<float> pooled;  // B x 512
    std::vector<std::uint32_t> argmax;  // B x 512: index into a2 of each pooled maximum
    std::vector<float> h;       // B x 64, fc1 after ReLU
    std::vector<float> logits;  // B x 10
  };
  void forward(const float* x, std::size_t batch, Workspace& ws) const;

  Layer conv1_, conv2_, fc1_, fc2_;
  Workspace ws_;
  std::vector<float> d_logits_, d_h_, d_pooled_, d_a2_, d_a1_;  // reused between steps
};

}  // namespace trainer
