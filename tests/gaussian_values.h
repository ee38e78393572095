// The tests' Gaussian data: n values of N(0, scale^2) from std::mt19937 seeded with `seed`,
// drawn in order, so a seed names the same vector in every test (CPU and GPU).
#pragma once

#include <cstddef>
#include <random>
#include <vector>

namespace gradcomm::testing {

inline std::vector<float> gaussian_values(std::size_t n, unsigned seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

}  // namespace gradcomm::testing
