#include "digits.h"

#include <zlib.h>

#include <algorithm>
#include <cstdlib>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>

namespace trainer {

std::string default_digits_path() {
  if (const char* path = std::getenv("GRADCOMM_DIGITS")) return path;
  return "/usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz";
}

Dataset load_digits(const std::string& path) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (!file) {
    throw std::runtime_error("cannot open the digits data set at " + path +
                             " (install Debian's python3-sklearn, or set GRADCOMM_DIGITS)");
  }
  Dataset data;
  char line[1024];
  std::size_t line_number = 0;
  while (gzgets(file, line, sizeof line)) {
    ++line_number;
    std::stringstream row(line);
    std::string cell;
    std::vector<float> values;
    while (std::getline(row, cell, ',')) values.push_back(std::stof(cell));
    if (values.empty()) continue;
    if (values.size() != Dataset::kFeatures + 1) {
      gzclose(file);
      throw std::runtime_error(path + ":" + std::to_string(line_number) + ": expected 65 values, got " +
                               std::to_string(values.size()));
    }
    for (std::size_t j = 0; j < Dataset::kFeatures; ++j) data.features.push_back(values[j] / 16.0f);
    data.labels.push_back(static_cast<int>(values.back()));
  }
  gzclose(file);
  if (data.size() == 0) throw std::runtime_error("no samples in " + path);
  return data;
}

void split(const Dataset& all, double test_fraction, std::uint64_t seed, Dataset& train, Dataset& test) {
  std::vector<std::size_t> order(all.size());
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  const std::size_t n_test = static_cast<std::size_t>(test_fraction * static_cast<double>(all.size()));
  for (std::size_t k = 0; k < order.size(); ++k) {
    Dataset& dst = k < n_test ? test : train;
    const std::size_t i = order[k];
    dst.features.insert(dst.features.end(), all.features.begin() + static_cast<std::ptrdiff_t>(i * Dataset::kFeatures),
                        all.features.begin() + static_cast<std::ptrdiff_t>((i + 1) * Dataset::kFeatures));
    dst.labels.push_back(all.labels[i]);
  }
}

}  // namespace trainer
