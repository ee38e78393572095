// The benchmark's gradients: a pure function of (seed, rank, element index), so every
// rank can recompute every other rank's input and the exact dense average without trusting
// any collective, and a sweep's smaller sizes are prefixes of its largest.
#pragma once

#include <cstdint>
#include <span>

namespace gradcomm::bench {

// Element `index` of rank `rank`'s flattened gradient: a multiple of 2^-23 in [-1, 1), so
// sums of a few of them are exact in double.
inline float gradient_value(std::uint64_t seed, int rank, std::uint64_t index) {
  std::uint64_t z = seed * 0x9e3779b97f4a7c15ull + static_cast<std::uint64_t>(rank) * 0xbf58476d1ce4e5b9ull +
                    index * 0x94d049bb133111ebull;
  // splitmix64 finalizer
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  const auto top24 = static_cast<std::int32_t>(z >> 40);
  return static_cast<float>(top24 - (1 << 23)) * (1.0f / static_cast<float>(1 << 23));
}

inline void fill_gradient(std::uint64_t seed, int rank, std::span<float> out) {
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = gradient_value(seed, rank, i);
}

// The exact average over all ranks of each element (the sum is exact in double), computed
// on demand: a stored copy of a BERT-large reference would take 2.7 GB per rank.
class DenseReference {
 public:
  DenseReference(std::uint64_t seed, int world_size) : seed_(seed), world_size_(world_size) {}
  double operator()(std::uint64_t index) const {
    double sum = 0;
    for (int r = 0; r < world_size_; ++r) sum += gradient_value(seed_, r, index);
    return sum / world_size_;
  }
  // Whose gradients: a check whose bound depends on each rank's input (the quantizer's
  // per-bucket ranges) recomputes them with gradient_value().
  std::uint64_t seed() const noexcept { return seed_; }
  int world_size() const noexcept { return world_size_; }

 private:
  std::uint64_t seed_;
  int world_size_;
};

}  // namespace gradcomm::bench
