// The handwritten digits data set that Debian's python3-sklearn ships (1797 8x8 images,
// 64 features 0..16 and a label 0..9 per CSV line, gzip-compressed).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace trainer {

struct Dataset {
  std::vector<float> features;  // n x 64, scaled to [0, 1]
  std::vector<int> labels;      // n
  std::size_t size() const { return labels.size(); }
  static constexpr std::size_t kFeatures = 64;
  static constexpr int kClasses = 10;
};

// Where python3-sklearn puts the file; GRADCOMM_DIGITS overrides it (read once, here).
std::string default_digits_path();

// Throws std::runtime_error naming the file, and the line and value that are wrong.
Dataset load_digits(const std::string& path);

// A hash of every sample: ranks compare it to check that they read the same data.
std::uint64_t fingerprint(const Dataset& data);

// Deterministic split: a seeded shuffle, the first `test_fraction` of it is the test set.
void split(const Dataset& all, double test_fraction, std::uint64_t seed, Dataset& train, Dataset& test);

}  // namespace trainer
