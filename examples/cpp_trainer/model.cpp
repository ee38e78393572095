#include "model.h"

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

}  // namespace trainer
