// DGC's threshold search (sample, predict, collect, lower, select): its constants and its
// decisions, in one place for the CPU kernel (kernels/cpu/dgc_kernels.cpp) and the CUDA
// kernels (kernels/cuda/dgc_kernels.cu), so both try the same thresholds in the same
// rounds and select the same set (docs/algorithms/dgc.md, "Selection").
//
// The search, on either device:
//   1. One fused pass updates u and v, takes a strided sample of |v| and, from the second
//      step on, collects the candidates at or above a threshold predicted from the last
//      two steps' estimates, into at most fused_capacity(n, k) slots.
//   2. The estimate is the c-th largest sample, c = ceil(samples * density * kOversample)
//      (1 for the exact selection: every nonzero is a candidate).
//   3. start_search() decides whether the fused candidates do; otherwise collect passes
//      over v at t, t*kLowerFactor, ... (after_collect()) until at least low_count(k)
//      pass, t reaches the smallest float, or kMaxRounds passes were made in all, the
//      fused pass counting as the first.
//   4. The top min(count, k) candidates by key (magnitude, then the lower index) are sent.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "core/host_device.h"
#include "kernels/shared/float_ops.h"

namespace gradcomm::kernels::dgc {

// The reference aims the sample threshold at k and trims above 1.3k. With a fixed k slots
// every count above k is trimmed anyway, so the search aims at 1.3k: the trim then sees
// every element above the threshold, and the result is the exact top-k whenever count >= k.
inline constexpr double kOversample = 1.3;
// Below 0.8k candidates the threshold is lowered by 0.8 and v recounted, at most
// kMaxRounds passes over v in all (the reference's 10 rounds), the fused pass included.
inline constexpr double kLowFraction = 0.8;
inline constexpr float kLowerFactor = 0.8f;
inline constexpr int kMaxRounds = 10;
// The fused pass keeps at most this many times k candidates (plus kFusedSlack) before it
// gives up and leaves the collection to a separate pass.
inline constexpr std::size_t kFusedCandidatesPerSlot = 4;
inline constexpr std::size_t kFusedSlack = 1024;

inline std::size_t fused_capacity(std::size_t n, std::size_t k) {
  const std::size_t capacity = kFusedCandidatesPerSlot * k + kFusedSlack;
  return capacity < n ? capacity : n;
}

// Fewer candidates than this after a pass: lower the threshold and count again.
inline std::size_t low_count(std::size_t k) {
  return static_cast<std::size_t>(std::ceil(kLowFraction * static_cast<double>(k)));
}

// Samples of v at start, start + stride, ... below n.
inline std::size_t sample_count(std::size_t n, std::size_t start, std::size_t stride) {
  if (stride == 0 || start >= n) return 0;
  return (n - start + stride - 1) / stride;
}

// The rank (1-based, within [1, samples]) of the sample that is the estimate.
inline std::size_t sample_rank(std::size_t samples, double density) {
  const auto c = static_cast<std::size_t>(
      std::ceil(static_cast<double>(samples) * density * kOversample));
  return c < 1 ? 1 : (c > samples ? samples : c);
}

// A threshold is the bits of a non-negative float; at least 1, so a zero is never a
// candidate.
GRADCOMM_HOST_DEVICE_INLINE std::uint32_t at_least_one(std::uint32_t bits) {
  return bits > 1u ? bits : 1u;
}

GRADCOMM_HOST_DEVICE_INLINE std::uint32_t lower(std::uint32_t bits) {
  return at_least_one(float_bits(fmul(bits_float(bits), kLowerFactor)));
}

// Where this step's threshold will be, from the last two estimates (0: none yet): while v
// builds up (the first ~1/density steps) the threshold climbs steadily, and error feedback
// piles values up just under the last one, so reusing it unchanged would collect several
// times k. In the steady state the two estimates agree and this is the last one.
GRADCOMM_HOST_DEVICE_INLINE std::uint32_t predicted_threshold(std::uint32_t last,
                                                              std::uint32_t before) {
  if (last == 0 || before == 0) return last;
  const float l = bits_float(last);
  const float rise = fsub(l, bits_float(before));
  const float next = fadd(l, 0.0f < rise ? rise : 0.0f);
  return is_finite(next) ? float_bits(next) : last;
}

// The last two estimates of a layer, kept across steps (host memory for a CPU layer,
// device memory for a CUDA one).
struct ThresholdMemory {
  std::uint32_t last = 0;
  std::uint32_t before = 0;
};

// Where the search stands.
struct SearchState {
  std::uint32_t t = 1;          // the threshold of the next collect pass
  std::uint32_t threshold = 0;  // the threshold the candidates in hand were collected at
  std::uint64_t count = 0;      // candidates in hand
  std::int32_t rounds = 1;      // passes over v so far (the fused pass is the first)
  std::uint32_t done = 0;
};

// After the fused pass. `predicted`: the threshold it collected at (0: it did not
// collect); `overflow`: it found more than fused_capacity() of them.
GRADCOMM_HOST_DEVICE_INLINE SearchState start_search(std::uint32_t estimate, std::uint32_t predicted,
                                                     bool overflow, std::uint64_t fused_count,
                                                     std::uint64_t k, std::uint64_t low) {
  SearchState s;
  s.t = estimate;
  if (predicted != 0 && !overflow) {
    // At least k at the predicted threshold: the true top-k are all among them. Fewer, but
    // the predicted threshold is at or below this step's estimate: as good as a recount.
    s.count = fused_count;
    s.done = fused_count >= k || (predicted <= estimate && fused_count >= low);
    if (s.done) {
      s.threshold = predicted;
    } else if (predicted <= estimate) {
      s.t = lower(predicted);
    }
  }
  return s;
}

// A collect pass at s.t found `count` candidates.
GRADCOMM_HOST_DEVICE_INLINE void after_collect(SearchState& s, std::uint64_t count,
                                               std::uint64_t low) {
  s.count = count;
  s.rounds += 1;
  s.threshold = s.t;
  if (count >= low || s.t <= 1 || s.rounds >= kMaxRounds) {
    s.done = 1;
  } else {
    s.t = lower(s.t);
  }
}

// What the last sparse encode of a layer did, written by the kernels (host memory for a
// CPU layer, device memory for a CUDA one).
struct SearchStats {
  std::uint64_t k = 0;           // slots
  std::uint64_t sent = 0;        // slots filled
  std::uint64_t candidates = 0;  // elements at or above the final threshold
  std::uint32_t threshold = 0;   // bits of the threshold the candidates were collected at
  std::int32_t rounds = 0;       // passes over v
};

// One sparse encode of a layer, the same arguments for the CPU entry
// (kernels::dgc_encode_sparse) and the CUDA one (kernels::cuda::dgc_encode_sparse):
// pointers are host memory for the one, device memory (of one device) for the other.
struct SparseEncodeArgs {
  const float* grad = nullptr;  // n
  float* u = nullptr;           // n, updated
  float* v = nullptr;           // n, updated
  std::size_t n = 0;
  std::size_t k = 0;  // slots, in [1, n]
  float momentum = 0.9f;
  bool nesterov = false;
  bool masking = true;  // u = 0 where a value was sent (paper Eq. 9)
  // The local clipping factor (paper Eq. 8; 1: none), or, where grad_scale_at is set, the
  // factor in memory (the CUDA path computes it on the device).
  float grad_scale = 1.0f;
  const float* grad_scale_at = nullptr;
  bool exact = false;  // every nonzero is a candidate: no sample, no prediction
  double density = 0.001;
  std::size_t sample_start = 0;  // < min(sample_stride, n)
  std::size_t sample_stride = 100;
  bool half_values = false;
  void* payload = nullptr;            // payload_bytes(k, half_values), 4-byte aligned
  ThresholdMemory* memory = nullptr;  // the layer's last two estimates, updated
  SearchStats* stats = nullptr;       // written (may be null)
};

}  // namespace gradcomm::kernels::dgc
