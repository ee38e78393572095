#include "gradcomm_bench/models.h"

#include <fstream>
#include <sstream>

#include <cstdio>

#include "gradcomm/agreement.h"
#include "gradcomm/error.h"

namespace gradcomm::bench {
namespace {

struct KnownModel {
  const char* name;
  const char* source;
  std::size_t tensors, params, params_1d;
};

// Published totals, independent of the tables: a table that drifts from its architecture
// fails here instead of benchmarking the wrong model.
constexpr KnownModel kKnownModels[] = {
    {"resnet50", "torchvision.models.resnet50 (v1.5), 1000 classes", 161, 25'557'032, 54'120},
    {"bert-large", "HF BertModel bert-large-uncased with pooler, no pre-training heads", 391, 335'141'888,
     322'560},
    {"gpt2", "HF GPT2Model gpt2 (124M), LM head tied to wte", 148, 124'439'808, 121'344},
};

}  // namespace

std::string known_models() {
  std::string names;
  for (const KnownModel& m : kKnownModels) names += (names.empty() ? "" : ", ") + std::string(m.name);
  return names;
}

ModelTable load_model(const std::string& name, const std::string& dir) {
  const KnownModel* known = nullptr;
  for (const KnownModel& m : kKnownModels) {
    if (name == m.name) known = &m;
  }
  GRADCOMM_CHECK_ARG(known != nullptr, "unknown model '", name, "' (known: ", known_models(), ")");
  const std::string path = dir + "/" + name + ".txt";
  std::ifstream in(path);
  GRADCOMM_CHECK_ARG(in.good(), "cannot read the layer table ", path,
                     " (pass --models-dir DIR pointing at bench/models)");
  ModelTable table{name, known->source, {}, 0, 0};
  std::string line;
  for (int lineno = 1; std::getline(in, line); ++lineno) {
    line = line.substr(0, line.find('#'));
    std::istringstream fields(line);
    LayerSpec layer;
    if (!(fields >> layer.name)) continue;
    layer.numel = 1;
    layer.ndim = 0;
    long long dim = 0;
    while (fields >> dim) {
      GRADCOMM_CHECK_ARG(dim > 0, path, ":", lineno, ": dimension ", dim, " of '", layer.name, "' is not positive");
      layer.numel *= static_cast<std::size_t>(dim);
      layer.ndim += 1;
    }
    GRADCOMM_CHECK_ARG(fields.eof() && layer.ndim > 0, path, ":", lineno, ": expected 'name dim...', got '",
                       line, "'");
    table.params += layer.numel;
    if (layer.ndim == 1) table.params_1d += layer.numel;
    table.layers.push_back(std::move(layer));
  }
  GRADCOMM_CHECK_ARG(table.layers.size() == known->tensors && table.params == known->params &&
                         table.params_1d == known->params_1d,
                     path, " holds ", table.layers.size(), " tensors, ", table.params, " parameters (",
                     table.params_1d, " in 1-D tensors); ", name, " has ", known->tensors, ", ", known->params,
                     " (", known->params_1d, ")");
  return table;
}

std::string table_fingerprint(const ModelTable& table) {
  std::uint64_t h = kFingerprintSeed;
  for (const LayerSpec& layer : table.layers) {
    h = fingerprint_bytes(layer.name.data(), layer.name.size(), h);
    h = fingerprint_bytes(&layer.numel, sizeof layer.numel, h);
    h = fingerprint_bytes(&layer.ndim, sizeof layer.ndim, h);
  }
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(h));
  return std::to_string(table.layers.size()) + "-tensors-" + text;
}

}  // namespace gradcomm::bench
