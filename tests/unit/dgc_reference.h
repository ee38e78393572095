// What the DGC tests on both devices share: the straightforward selection they compare
// against (a full sort of |v| over the nonzero elements, ties to the lower index, indices
// returned ascending), and the layout that runs the threshold search to its round limit.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cpu/dgc_kernels.h"
#include "kernels/shared/dgc_search.h"

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

// Issue 13 fault 9's case: every 100th element of the gradient is 1.0, the rest 0, and
// the density asks for 50 times more. The sample (every 100th element) promises many
// candidates, every collect pass finds too few, so the search must stop at kMaxRounds
// passes in all. The arguments of one encode; the buffers are the caller's (host or
// device), `grad` holds the gradient to copy into its own.
struct RoundLimitCase {
  static constexpr std::size_t kN = 100000, kStride = 100, kSlots = 5000;
  std::vector<float> grad = std::vector<float>(kN, 0.0f);
  RoundLimitCase() {
    for (std::size_t i = 0; i < kN; i += kStride) grad[i] = 1.0f;
  }
  kernels::dgc::SparseEncodeArgs args(const float* g, float* u, float* v, void* payload,
                                      kernels::dgc::ThresholdMemory* memory, kernels::dgc::SearchStats* stats) const {
    kernels::dgc::SparseEncodeArgs a;
    a.grad = g;
    a.u = u;
    a.v = v;
    a.n = kN;
    a.k = kSlots;
    a.momentum = 0.0f;
    a.density = 0.05;
    a.sample_start = 0;
    a.sample_stride = kStride;
    a.payload = payload;
    a.memory = memory;
    a.stats = stats;
    return a;
  }
  // The CPU kernel on this case, from zero state.
  struct Result {
    std::vector<std::uint8_t> payload;
    std::vector<float> v;
    kernels::dgc::ThresholdMemory memory;
    kernels::dgc::SearchStats stats;
  };
  Result run_on_cpu() const {
    Result r;
    r.payload.assign(kernels::dgc::payload_bytes(kSlots, false), 0);
    r.v.assign(kN, 0.0f);
    std::vector<float> u(kN, 0.0f);
    std::vector<std::uint64_t> keys(kN), scratch(kN);
    std::vector<std::uint32_t> samples(kernels::dgc::sample_count(kN, 0, kStride));
    kernels::dgc_encode_sparse(args(grad.data(), u.data(), r.v.data(), r.payload.data(), &r.memory, &r.stats),
                               {keys.data(), scratch.data(), samples.data()});
    return r;
  }
};

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
