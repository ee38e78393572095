#include "kernels/cpu/dgc_kernels.h"

#include <algorithm>
#include <cstring>
#include <functional>

namespace gradcomm::kernels {

namespace {

struct ChunkResult {
  std::uint32_t bad;  // non-finite gradient elements
  std::uint32_t any;  // bit 31 set iff some updated |v| bits >= t (see collect_range)
};

// One chunk of the fused pass; the chunk stays in L1 so the samples and candidates taken
// after it are read from cache. The candidate test rides along in the vectorized loop, so
// only chunks holding a candidate are looked at again.
template <bool kNesterov, bool kScaled>
ChunkResult accumulate_chunk(const float* __restrict g, float* __restrict u, float* __restrict v,
                             std::size_t n, float m, float s, std::uint32_t t) {
  std::uint32_t bad = 0, any = 0;
  for (std::size_t i = 0; i < n; ++i) {
    float ui = u[i], vi = v[i];
    bad += !dgc::accumulate<kNesterov, kScaled>(g[i], ui, vi, m, s);
    u[i] = ui;
    v[i] = vi;
    any |= ~(abs_bits(vi) - t);
  }
  return {bad, any};
}

// Appends the keys of |v[i]| bits >= t for i in [begin, end) to keys[*count..capacity).
// Candidates are rare (about 1e-3 of n), so a block is tested at once with integer ops
// only (they vectorize on plain SSE2): for a, t < 2^31, bit 31 of ~(a - t) is set iff
// a >= t. Returns false when the capacity ran out.
bool collect_range(const float* v, std::size_t begin, std::size_t end, std::uint32_t t,
                   std::uint64_t* keys, std::size_t* count, std::size_t capacity) {
  constexpr std::size_t kBlock = 64, kSubBlock = 16;
  std::size_t c = *count;
  bool fits = true;
  auto take = [&](std::size_t j) {
    const std::uint32_t a = abs_bits(v[j]);
    if (a >= t) {
      if (c == capacity) {
        fits = false;
        return;
      }
      keys[c++] = dgc::candidate_key(a, static_cast<std::uint32_t>(j));
    }
  };
  auto any_at_or_above = [&](std::size_t from, std::size_t count) {
    std::uint32_t any = 0;
    for (std::size_t j = 0; j < count; ++j) any |= ~(abs_bits(v[from + j]) - t);
    return (any >> 31) != 0;
  };
  std::size_t i = begin;
  for (; i + kBlock <= end && fits; i += kBlock) {
    if (!any_at_or_above(i, kBlock)) continue;
    for (std::size_t sub = i; sub < i + kBlock; sub += kSubBlock) {
      if (!any_at_or_above(sub, kSubBlock)) continue;
      for (std::size_t j = sub; j < sub + kSubBlock; ++j) take(j);
    }
  }
  for (; i < end && fits; ++i) take(i);
  *count = c;
  return fits;
}

template <bool kNesterov, bool kScaled>
DgcAccumulateResult accumulate(const float* g, float* u, float* v, std::size_t n,
                               const DgcAccumulateArgs& a) {
  // Small enough that most chunks hold no candidate (about 1.3k of n in all).
  constexpr std::size_t kChunk = 256;
  DgcAccumulateResult r;
  bool collecting = a.collect_bits != 0;
  // Without collection the test compares against 2^31, which no |v| bits reach.
  const std::uint32_t t = collecting ? a.collect_bits : 0x80000000u;
  std::size_t next = a.sample_stride ? a.sample_start : n;
  for (std::size_t begin = 0; begin < n; begin += kChunk) {
    const std::size_t end = std::min(n, begin + kChunk);
    const ChunkResult c = accumulate_chunk<kNesterov, kScaled>(
        g + begin, u + begin, v + begin, end - begin, a.momentum, a.grad_scale, t);
    r.nonfinite += c.bad;
    for (; next < end; next += a.sample_stride) a.samples[r.samples++] = abs_bits(v[next]);
    if (collecting && (c.any >> 31)) {
      collecting =
          collect_range(v, begin, end, a.collect_bits, a.keys, &r.candidates, a.key_capacity);
      r.overflow = !collecting;
    }
  }
  return r;
}

}  // namespace

DgcAccumulateResult dgc_accumulate(const float* grad, float* u, float* v, std::size_t n,
                                   const DgcAccumulateArgs& args) {
  const bool scaled = args.grad_scale != 1.0f;
  if (args.nesterov) {
    return scaled ? accumulate<true, true>(grad, u, v, n, args)
                  : accumulate<true, false>(grad, u, v, n, args);
  }
  return scaled ? accumulate<false, true>(grad, u, v, n, args)
                : accumulate<false, false>(grad, u, v, n, args);
}

std::uint32_t dgc_sample_threshold(std::uint32_t* samples, std::size_t count, std::size_t c) {
  if (count == 0) return 1;
  c = std::clamp<std::size_t>(c, 1, count);
  std::nth_element(samples, samples + (c - 1), samples + count, std::greater<>());
  return dgc::at_least_one(samples[c - 1]);
}

std::size_t dgc_collect(const float* v, std::size_t n, std::uint32_t threshold_bits,
                        std::uint64_t* keys) {
  std::size_t count = 0;
  collect_range(v, 0, n, threshold_bits, keys, &count, n);
  return count;
}

std::size_t dgc_select_top(const std::uint64_t* keys, std::size_t count, std::size_t k,
                           std::uint64_t* scratch, std::uint32_t* indices) {
  const std::size_t m = std::min(count, k);
  if (m == 0) return 0;
  // Keys are unique (the index is part of them), so exactly m are >= the m-th largest;
  // filtering the index-ordered keys by it yields the indices already ascending.
  std::uint64_t kth = 0;
  if (count > m) {
    std::copy(keys, keys + count, scratch);
    std::nth_element(scratch, scratch + (m - 1), scratch + count, std::greater<>());
    kth = scratch[m - 1];
  }
  std::size_t out = 0;
  for (std::size_t j = 0; j < count; ++j) {
    if (keys[j] >= kth) indices[out++] = dgc::key_index(keys[j]);
  }
  return out;
}

void dgc_pack_f32(const std::uint32_t* indices, std::size_t count, float* v, float* u, bool masking,
                  float* values) {
  for (std::size_t j = 0; j < count; ++j) {
    const std::uint32_t i = indices[j];
    values[j] = dgc::take_f32(v[i]);
    if (masking) u[i] = 0.0f;
  }
}

void dgc_pack_f16(const std::uint32_t* indices, std::size_t count, float* v, float* u, bool masking,
                  std::uint16_t* values) {
  for (std::size_t j = 0; j < count; ++j) {
    const std::uint32_t i = indices[j];
    values[j] = dgc::take_f16(v[i]);
    if (masking) u[i] = 0.0f;
  }
}

std::size_t dgc_encode_sparse(const dgc::SparseEncodeArgs& a, const DgcSparseWorkspace& w) {
  const std::size_t n = a.n, k = a.k;
  auto* base = static_cast<std::uint8_t*>(a.payload);
  auto* indices = reinterpret_cast<std::uint32_t*>(base + dgc::kPayloadHeaderBytes);
  std::uint8_t* values = base + dgc::values_offset(k);
  DgcAccumulateArgs args;
  args.momentum = a.momentum;
  args.nesterov = a.nesterov;
  args.grad_scale = a.grad_scale_at ? *a.grad_scale_at : a.grad_scale;
  std::uint32_t predicted = 0;
  if (!a.exact) {
    args.sample_start = a.sample_start;
    args.sample_stride = a.sample_stride;
    args.samples = w.samples;
    // Collect at the predicted threshold inside the fused pass; most steps then need no
    // second pass over v. A prediction far too low stops at the capacity.
    predicted = dgc::predicted_threshold(a.memory->last, a.memory->before);
    args.collect_bits = predicted;
    args.keys = w.keys;
    args.key_capacity = dgc::fused_capacity(n, k);
  }
  const DgcAccumulateResult acc = dgc_accumulate(a.grad, a.u, a.v, n, args);

  std::uint32_t estimate = 1;  // exact: every nonzero is a candidate
  if (!a.exact) {
    estimate = dgc_sample_threshold(w.samples, acc.samples, dgc::sample_rank(acc.samples, a.density));
  }
  const std::size_t low = dgc::low_count(k);
  dgc::SearchState s = dgc::start_search(estimate, predicted, acc.overflow, acc.candidates, k, low);
  while (!s.done) dgc::after_collect(s, dgc_collect(a.v, n, s.t, w.keys), low);
  if (!a.exact) *a.memory = {estimate, a.memory->last};

  const std::size_t count = static_cast<std::size_t>(s.count);
  const std::size_t sent = dgc_select_top(w.keys, count, k, w.scratch_keys, indices);
  const auto count32 = static_cast<std::uint32_t>(sent);
  std::memcpy(base, &count32, sizeof count32);
  std::fill(indices + sent, indices + k, dgc::kSentinel);
  if (a.half_values) {
    dgc_pack_f16(indices, sent, a.v, a.u, a.masking, reinterpret_cast<std::uint16_t*>(values));
  } else {
    dgc_pack_f32(indices, sent, a.v, a.u, a.masking, reinterpret_cast<float*>(values));
  }
  // Padding slots and the tail to 8 bytes are zero, so payloads are fully defined bytes.
  std::uint8_t* pad = values + sent * (a.half_values ? 2 : 4);
  std::memset(pad, 0, static_cast<std::size_t>(base + dgc::payload_bytes(k, a.half_values) - pad));
  if (a.stats) *a.stats = {k, sent, count, s.threshold, s.rounds};
  return acc.nonfinite;
}

std::size_t dgc_scaled_copy_f32(const float* in, float s, float* out, std::size_t n) {
  std::size_t bad = 0;
  for (std::size_t i = 0; i < n; ++i) {
    bad += !is_finite(in[i]);
    out[i] = dgc::scaled_or_zero(in[i], s);
  }
  return bad;
}

std::size_t dgc_scaled_copy_f16(const float* in, float s, std::uint16_t* out, std::size_t n) {
  std::size_t bad = 0;
  for (std::size_t i = 0; i < n; ++i) {
    bad += !is_finite(in[i]);
    out[i] = float_to_half(dgc::scaled_or_zero(in[i], s));
  }
  return bad;
}

double dgc_sum_squares_finite(const float* in, std::size_t n) {
  double sum = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    const float x = in[i];
    if (is_finite(x)) sum += static_cast<double>(x) * x;
  }
  return sum;
}

void dgc_dense_momentum(float* avg, float* u, std::size_t n, float momentum, bool nesterov) {
  if (nesterov) {
    for (std::size_t i = 0; i < n; ++i) dgc::dense_momentum<true>(avg[i], u[i], momentum);
  } else {
    for (std::size_t i = 0; i < n; ++i) dgc::dense_momentum<false>(avg[i], u[i], momentum);
  }
}

void dgc_scatter_add(const std::uint8_t* block, std::size_t k, bool half, float inv_ranks,
                     float* out) {
  const std::uint32_t count = dgc::payload_count(block);
  for (std::size_t j = 0; j < count; ++j) {
    float& o = out[dgc::payload_index(block, j)];
    o = fadd(o, dgc::average_term(dgc::payload_value(block, k, j, half), inv_ranks));
  }
}

}  // namespace gradcomm::kernels
