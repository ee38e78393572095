// The straightforward DGC selection the tests compare against: a full sort of |v| over
// the nonzero elements, ties to the lower index, indices returned ascending.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace gradcomm::testing {

inline std::vector<std::uint32_t> reference_topk(const std::vector<float>& v, std::size_t k) {
  std::vector<std::uint32_t> idx;
  for (std::uint32_t i = 0; i < v.size(); ++i) {
    if (v[i] != 0.0f) idx.push_back(i);
  }
  std::stable_sort(idx.begin(), idx.end(), [&](std::uint32_t a, std::uint32_t b) {
    return std::fabs(v[a]) > std::fabs(v[b]);
  });
  idx.resize(std::min(k, idx.size()));
  std::sort(idx.begin(), idx.end());
  return idx;
}

}  // namespace gradcomm::testing
