#include "digits.h"

#include <zlib.h>

#include <gradcomm/agreement.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>

namespace trainer {

std::string default_digits_path() {
  if (const char* path = std::getenv("GRADCOMM_DIGITS")) return path;
  return "/usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz";
}

namespace {

// One CSV row: 64 pixels 0..16 and a label 0..9. Throws naming the line and what is wrong.
void parse_row(const std::string& where, const char* row, Dataset& data) {
  const char* at = row;
  float values[Dataset::kFeatures + 1];
  std::size_t n = 0;
  auto refuse = [&](const std::string& why) {
    std::string shown(row);
    while (!shown.empty() && (shown.back() == '\n' || shown.back() == '\r')) shown.pop_back();
    if (shown.size() > 80) shown = shown.substr(0, 77) + "...";
    throw std::runtime_error(where + ": " + why + " (expected 65 comma-separated numbers: 64 pixels 0..16 and a " +
                             "label 0..9; the line reads '" + shown + "')");
  };
  while (true) {
    char* end = nullptr;
    const float x = std::strtof(at, &end);
    if (end == at || !std::isfinite(x)) refuse("value " + std::to_string(n + 1) + " is not a number");
    if (n == Dataset::kFeatures + 1) refuse("more than 65 values");
    values[n++] = x;
    at = end;
    while (*at == ' ') ++at;
    if (*at == ',') {
      ++at;
      continue;
    }
    if (*at != '\0' && *at != '\n' && *at != '\r') refuse("value " + std::to_string(n) + " is not a number");
    break;
  }
  if (n != Dataset::kFeatures + 1) refuse(std::to_string(n) + " values");
  for (std::size_t j = 0; j < Dataset::kFeatures; ++j) {
    if (!(values[j] >= 0 && values[j] <= 16)) refuse("pixel " + std::to_string(j + 1) + " is outside 0..16");
    data.features.push_back(values[j] / 16.0f);
  }
  const float label = values[Dataset::kFeatures];
  if (!(label >= 0 && label < Dataset::kClasses && label == std::floor(label))) refuse("the label is not 0..9");
  data.labels.push_back(static_cast<int>(label));
}

}  // namespace

Dataset load_digits(const std::string& path) {
  std::error_code ec;
  const bool regular = std::filesystem::is_regular_file(path, ec);
  std::unique_ptr<gzFile_s, int (*)(gzFile)> file(regular ? gzopen(path.c_str(), "rb") : nullptr, gzclose);
  if (!file) {
    throw std::runtime_error("cannot open the digits data set at " + path +
                             (regular || ec || !std::filesystem::exists(path) ? "" : " (not a regular file)") +
                             " (install Debian's python3-sklearn, or set GRADCOMM_DIGITS)");
  }
  Dataset data;
  char line[4096];
  std::size_t line_number = 0;
  while (gzgets(file.get(), line, sizeof line)) {
    ++line_number;
    const std::string where = path + ":" + std::to_string(line_number);
    const std::size_t length = std::strlen(line);
    if (length + 1 == sizeof line && line[length - 1] != '\n') {
      throw std::runtime_error(where + ": a line longer than " + std::to_string(sizeof line - 1) +
                               " bytes: not the digits CSV");
    }
    if (line[0] == '\n' || line[0] == '\0' || (line[0] == '\r' && line[1] == '\n')) continue;
    parse_row(where, line, data);
  }
  int code = Z_OK;
  const char* message = gzerror(file.get(), &code);
  if (code != Z_OK && code != Z_STREAM_END) {
    throw std::runtime_error(path + ": cannot read it after line " + std::to_string(line_number) + ": " + message);
  }
  if (data.size() == 0) throw std::runtime_error("no samples in " + path);
  return data;
}

std::uint64_t fingerprint(const Dataset& data) {
  std::uint64_t h = gradcomm::fingerprint_bytes(data.features.data(), data.features.size() * sizeof(float));
  return gradcomm::fingerprint_bytes(data.labels.data(), data.labels.size() * sizeof(int), h);
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
