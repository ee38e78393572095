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

// One rank's DGC state under the straightforward rules (momentum 0.9 with correction and
// masking, exact top-k): step() accumulates a gradient (u = 0.9 u + g; v += u), adds v/p
// at the top k of |v| to `update` (what this rank sends, averaged), and clears u and v
// there.
struct DgcReferenceRank {
  std::vector<float> u, v;
  explicit DgcReferenceRank(std::size_t n) : u(n, 0.0f), v(n, 0.0f) {}

  template <typename Gradient>  // float gradient(std::size_t i)
  void step(Gradient gradient, std::size_t k, int world_size, std::vector<float>& update) {
    for (std::size_t i = 0; i < v.size(); ++i) {
      u[i] = 0.9f * u[i] + gradient(i);
      v[i] = v[i] + u[i];
    }
    for (std::uint32_t i : reference_topk(v, k)) {
      update[i] += v[i] * (1.0f / static_cast<float>(world_size));
      v[i] = 0.0f;
      u[i] = 0.0f;
    }
  }
};

}  // namespace gradcomm::testing
