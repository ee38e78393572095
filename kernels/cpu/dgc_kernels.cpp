#include "kernels/cpu/dgc_kernels.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <functional>

#include "core/float16.h"

namespace gradcomm::kernels {

namespace {

// (x - x) is 0 for finite x and NaN otherwise: branch-free, so loops vectorize.
inline bool is_finite(float x) { return (x - x) == 0.0f; }

inline std::uint32_t abs_bits(float x) { return std::bit_cast<std::uint32_t>(x) & 0x7fffffffu; }

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
    float x = kScaled ? g[i] * s : g[i];
    const bool ok = is_finite(g[i]);
    bad += !ok;
    x = ok ? x : 0.0f;
    float vn;
    if constexpr (kNesterov) {
      const float un = m * (u[i] + x);
      u[i] = un;
      vn = v[i] + un + x;
    } else {
      const float un = m * u[i] + x;
      u[i] = un;
      vn = v[i] + un;
    }
    v[i] = vn;
    any |= ~(abs_bits(vn) - t);
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
      keys[c++] =
          (static_cast<std::uint64_t>(a) << 32) | (0xffffffffu - static_cast<std::uint32_t>(j));
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

std::size_t dgc_sample_count(std::size_t n, std::size_t start, std::size_t stride) {
  if (stride == 0 || start >= n) return 0;
  return (n - start + stride - 1) / stride;
}

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
  return std::max<std::uint32_t>(samples[c - 1], 1);
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
    if (keys[j] >= kth) indices[out++] = dgc_key_index(keys[j]);
  }
  return out;
}

void dgc_pack_f32(const std::uint32_t* indices, std::size_t count, float* v, float* u, bool masking,
                  float* values) {
  for (std::size_t j = 0; j < count; ++j) {
    const std::uint32_t i = indices[j];
    values[j] = v[i];
    v[i] = 0.0f;
    if (masking) u[i] = 0.0f;
  }
}

void dgc_pack_f16(const std::uint32_t* indices, std::size_t count, float* v, float* u, bool masking,
                  std::uint16_t* values) {
  constexpr float kHalfMax = 65504.0f;
  for (std::size_t j = 0; j < count; ++j) {
    const std::uint32_t i = indices[j];
    const std::uint16_t h = float_to_half(std::clamp(v[i], -kHalfMax, kHalfMax));
    values[j] = h;
    v[i] -= half_to_float(h);
    if (masking) u[i] = 0.0f;
  }
}

std::size_t dgc_scaled_copy_f32(const float* in, float s, float* out, std::size_t n) {
  std::size_t bad = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const bool ok = is_finite(in[i]);
    bad += !ok;
    out[i] = ok ? in[i] * s : 0.0f;
  }
  return bad;
}

std::size_t dgc_scaled_copy_f16(const float* in, float s, std::uint16_t* out, std::size_t n) {
  std::size_t bad = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const bool ok = is_finite(in[i]);
    bad += !ok;
    out[i] = float_to_half(ok ? in[i] * s : 0.0f);
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
    for (std::size_t i = 0; i < n; ++i) {
      const float un = momentum * (u[i] + avg[i]);
      u[i] = un;
      avg[i] = un + avg[i];
    }
  } else {
    for (std::size_t i = 0; i < n; ++i) {
      const float un = momentum * u[i] + avg[i];
      u[i] = un;
      avg[i] = un;
    }
  }
}

}  // namespace gradcomm::kernels
