#include "model.h"

#include <algorithm>
#include <stdexcept>

#include "cnn.h"
#include "digits.h"
#include "mlp.h"

namespace trainer {
namespace {

class MlpModel final : public Model {
 public:
  MlpModel(const std::vector<std::size_t>& widths, std::uint64_t seed) : mlp_(widths, seed) {}

  std::vector<Parameter> parameters() override {
    std::vector<Parameter> params;
    for (std::size_t l = 0; l < mlp_.layers().size(); ++l) {
      Dense& d = mlp_.layers()[l];
      params.push_back({"fc" + std::to_string(l) + ".weight", &d.weight, &d.weight_grad, 2});
      params.push_back({"fc" + std::to_string(l) + ".bias", &d.bias, &d.bias_grad, 1});
    }
    return params;
  }
  float train_batch(const float* x, const int* labels, std::size_t batch,
                    const std::function<void(std::size_t)>& on_layer_ready) override {
    return mlp_.train_batch(x, labels, batch, on_layer_ready);
  }
  double accuracy(const float* x, const int* labels, std::size_t n) const override {
    return mlp_.accuracy(x, labels, n);
  }

 private:
  Mlp mlp_;
};

}  // namespace

std::unique_ptr<Model> make_model(const Options& options) {
  if (options.model == "mlp") {
    std::vector<std::size_t> widths = {Dataset::kFeatures};
    widths.insert(widths.end(), options.hidden.begin(), options.hidden.end());
    widths.push_back(Dataset::kClasses);
    return std::make_unique<MlpModel>(widths, options.seed);
  }
  if (options.model == "cnn") return std::make_unique<Cnn>(options.seed);
  throw std::invalid_argument("--model: unknown model '" + options.model + "' (mlp | cnn)");
}

double estimated_bytes_per_rank(const Options& options) {
  constexpr double kFloatsPerParameter = 10, kMaxSamplesAtOnce = 2000;
  const double samples = std::max(static_cast<double>(options.batch), kMaxSamplesAtOnce);
  double parameters = 0, activations_per_sample = 0;
  if (options.model == "cnn") {
    parameters = static_cast<double>(Cnn::kC1 * 9 + Cnn::kC1 + Cnn::kC2 * Cnn::kC1 * 9 + Cnn::kC2 +
                                     Cnn::kHidden * Cnn::kPooled + Cnn::kHidden + Cnn::kClasses * Cnn::kHidden +
                                     Cnn::kClasses);
    activations_per_sample = static_cast<double>(Cnn::kPadded * Cnn::kPadded * (1 + Cnn::kC1) +
                                                 Cnn::kPixels * Cnn::kC2 + 2 * Cnn::kPooled + Cnn::kHidden +
                                                 Cnn::kClasses);
  } else {
    // In double: widths up to 2^20 would overflow a 32-bit product, not this.
    double fan_in = Dataset::kFeatures;
    std::vector<double> widths(options.hidden.begin(), options.hidden.end());
    widths.push_back(Dataset::kClasses);
    for (const double w : widths) {
      parameters += fan_in * w + w;
      activations_per_sample += 3 * w;  // output, pre-activation, gradient
      fan_in = w;
    }
  }
  return 4 * (kFloatsPerParameter * parameters + samples * activations_per_sample);
}

}  // namespace trainer
