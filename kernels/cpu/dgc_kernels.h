// CPU kernels of Deep Gradient Compression. Plain pointers and counts; no allocation, no
// communication. The per-element arithmetic and the threshold search's rules are shared
// with the CUDA kernels (kernels/shared/dgc_math.h, kernels/shared/dgc_search.h).
// Magnitudes are compared as the bits of |x|, which keeps every loop in integer SIMD.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/shared/dgc_math.h"
#include "kernels/shared/dgc_search.h"

namespace gradcomm::kernels {

struct DgcAccumulateArgs {
  float momentum = 0.9f;
  bool nesterov = false;
  float grad_scale = 1.0f;  // local clipping factor (1: none)
  // Writes bits(|v[i]|) after the update for i = sample_start + j * sample_stride.
  std::size_t sample_start = 0;
  std::size_t sample_stride = 0;  // 0: no sampling
  std::uint32_t* samples = nullptr;
  // Collects the keys of updated |v| bits >= collect_bits (0: no collection) into keys,
  // while each chunk is still in cache. Past key_capacity it stops and reports overflow.
  std::uint32_t collect_bits = 0;
  std::uint64_t* keys = nullptr;
  std::size_t key_capacity = 0;
};

struct DgcAccumulateResult {
  std::size_t nonfinite = 0;
  std::size_t samples = 0;
  std::size_t candidates = 0;
  bool overflow = false;
};

// The fused pass: dgc::accumulate() on every element (reads g, u, v and writes u, v once);
// samples and candidates come from the same pass.
DgcAccumulateResult dgc_accumulate(const float* grad, float* u, float* v, std::size_t n,
                                   const DgcAccumulateArgs& args);

// The c-th largest (1-based) of `samples` (reordered in place), at least 1 so that a zero
// is never a candidate.
std::uint32_t dgc_sample_threshold(std::uint32_t* samples, std::size_t count, std::size_t c);

// Writes the key of every i with bits(|v[i]|) >= threshold_bits into keys (capacity n);
// returns how many.
std::size_t dgc_collect(const float* v, std::size_t n, std::uint32_t threshold_bits,
                        std::uint64_t* keys);

// Writes the indices of the top min(count, k) keys (largest magnitude, then lower index),
// ascending, to `indices`; `keys` must be in ascending index order (as collected), and
// `scratch` has room for count keys. Returns how many.
std::size_t dgc_select_top(const std::uint64_t* keys, std::size_t count, std::size_t k,
                           std::uint64_t* scratch, std::uint32_t* indices);

// Fills the value slots for `indices` from v with dgc::take_f32 / take_f16 (what was sent
// leaves v). With masking, u = 0 at those indices (paper Eq. 9).
void dgc_pack_f32(const std::uint32_t* indices, std::size_t count, float* v, float* u, bool masking,
                  float* values);
void dgc_pack_f16(const std::uint32_t* indices, std::size_t count, float* v, float* u, bool masking,
                  std::uint16_t* values);

// The scratch of dgc_encode_sparse, owned by the caller and sized for the largest layer:
// keys and scratch_keys n each, samples sample_count(n, 0, stride).
struct DgcSparseWorkspace {
  std::uint64_t* keys = nullptr;
  std::uint64_t* scratch_keys = nullptr;
  std::uint32_t* samples = nullptr;
};

// One sparse encode (docs/algorithms/dgc.md, "Selection"): the fused pass, the threshold
// search of kernels/shared/dgc_search.h, the selection and the payload
//   uint32 count | uint32 index[k] | value[k] (fp32 or fp16) | zero padding to 8 bytes.
// The CUDA entry kernels::cuda::dgc_encode_sparse takes the same arguments on device
// memory. Returns the non-finite gradient elements (counted as 0).
std::size_t dgc_encode_sparse(const dgc::SparseEncodeArgs& args, const DgcSparseWorkspace& workspace);

// out = finite(in) ? in * s : 0 (fp32 or fp16 out); returns the non-finite count.
std::size_t dgc_scaled_copy_f32(const float* in, float s, float* out, std::size_t n);
std::size_t dgc_scaled_copy_f16(const float* in, float s, std::uint16_t* out, std::size_t n);

// Sum of squares of the finite elements (for local clipping).
double dgc_sum_squares_finite(const float* in, std::size_t n);

// dgc::dense_momentum() on every element: u is updated, avg becomes the update.
void dgc_dense_momentum(float* avg, float* u, std::size_t n, float momentum, bool nesterov);

// One rank's validated sparse payload `block` (k slots) added into the average:
// out[index j] += dgc::average_term(value j) for j < its count. Called for the ranks in
// rank order on an `out` that starts at +0, so every rank sums in the same order.
void dgc_scatter_add(const std::uint8_t* block, std::size_t k, bool half, float inv_ranks,
                     float* out);

}  // namespace gradcomm::kernels
