// Layer lists of real models for gradcomm-bench --model, read from bench/models/<name>.txt
// (one parameter tensor per line: name and dims, in named_parameters() order) and checked
// against the totals known for the architecture.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "gradcomm/layer.h"

namespace gradcomm::bench {

struct ModelTable {
  std::string name;
  std::string source;  // which architecture the table follows
  std::vector<LayerSpec> layers;
  std::size_t params = 0;
  std::size_t params_1d = 0;  // in 1-D tensors (biases, norms), which compressors leave dense
};

// The model names --model accepts, comma separated (for messages).
std::string known_models();

// Reads `dir`/<name>.txt; throws gradcomm::Error for an unknown name, an unreadable or
// malformed file, or totals that differ from the architecture's.
ModelTable load_model(const std::string& name, const std::string& dir);

// Its layers' names and shapes as a word for the settings agreement ("161-tensors-<hash>").
std::string table_fingerprint(const ModelTable& table);

}  // namespace gradcomm::bench
