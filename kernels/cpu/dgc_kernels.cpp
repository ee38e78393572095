#include "kernels/cpu/dgc_kernels.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <functional>

#include "kernels/cpu/fp16.h"

namespace gradcomm::kernels {

namespace {

// (x - x) is 0 for finite x and NaN otherwise: branch-free, so loops vectorize.
inline bool is_finite(float x) { return (x - x) == 0.0f; }

inline std::uint32_t abs_bits(float x) { return std::bit_cast<std::uint32_t>(x) & 0x7fffffffu; }

// One chunk of the fused pass; the chunk stays in L1 so the samples taken after it are
// read from cache, not from memory.
template <bool kNesterov, bool kScaled>
std::uint32_t accumulate_chunk(const float* __restrict g, float* __restrict u, float* __restrict v,
                               std::size_t n, float m, float s) {
  std::uint32_t bad = 0;
  for (std::size_t i = 0; i < n; ++i) {
    float x = kScaled ? g[i] * s : g[i];
    const bool ok = is_finite(g[i]);
    bad += !ok;
    x = ok ? x : 0.0f;
    if constexpr (kNesterov) {
      const float un = m * (u[i] + x);
      u[i] = un;
      v[i] = v[i] + un + x;
    } else {
      const float un = m * u[i] + x;
      u[i] = un;
      v[i] = v[i] + un;
    }
  }
  return bad;
}

template <bool kNesterov, bool kScaled>
std::size_t accumulate(const float* g, float* u, float* v, std::size_t n, const DgcAccumulateArgs& a,
                       std::uint32_t* samples, std::size_t* num_samples) {
  constexpr std::size_t kChunk = 2048;
  std::size_t bad = 0, taken = 0;
  std::size_t next = a.sample_stride ? a.sample_start : n;
  for (std::size_t begin = 0; begin < n; begin += kChunk) {
    const std::size_t end = std::min(n, begin + kChunk);
    bad += accumulate_chunk<kNesterov, kScaled>(g + begin, u + begin, v + begin, end - begin,
                                               a.momentum, a.grad_scale);
    for (; next < end; next += a.sample_stride) samples[taken++] = abs_bits(v[next]);
  }
  if (num_samples) *num_samples = taken;
  return bad;
}

}  // namespace

std::size_t dgc_sample_count(std::size_t n, std::size_t start, std::size_t stride) {
  if (stride == 0 || start >= n) return 0;
  return (n - start + stride - 1) / stride;
}

std::size_t dgc_accumulate(const float* grad, float* u, float* v, std::size_t n,
                           const DgcAccumulateArgs& args, std::uint32_t* samples,
                           std::size_t* num_samples) {
  const bool scaled = args.grad_scale != 1.0f;
  if (args.nesterov) {
    return scaled ? accumulate<true, true>(grad, u, v, n, args, samples, num_samples)
                  : accumulate<true, false>(grad, u, v, n, args, samples, num_samples);
  }
  return scaled ? accumulate<false, true>(grad, u, v, n, args, samples, num_samples)
                : accumulate<false, false>(grad, u, v, n, args, samples, num_samples);
}

std::uint32_t dgc_sample_threshold(std::uint32_t* samples, std::size_t count, std::size_t c) {
  if (count == 0) return 1;
  c = std::clamp<std::size_t>(c, 1, count);
  std::nth_element(samples, samples + (c - 1), samples + count, std::greater<>());
  return std::max<std::uint32_t>(samples[c - 1], 1);
}

std::size_t dgc_collect(const float* v, std::size_t n, std::uint32_t threshold_bits,
                        std::uint64_t* keys) {
  // Candidates are rare (about 1e-3 of n): test a block of 16 with a vectorized OR, and
  // look at single elements only in blocks that hold one. Signed compares are exact here
  // since |v| bits and the threshold are below 2^31.
  constexpr std::size_t kBlock = 16;
  const auto t = static_cast<std::int32_t>(threshold_bits);
  std::size_t count = 0, i = 0;
  auto take = [&](std::size_t j) {
    const std::uint32_t a = abs_bits(v[j]);
    if (static_cast<std::int32_t>(a) >= t) {
      keys[count++] = (static_cast<std::uint64_t>(a) << 32) | (0xffffffffu - static_cast<std::uint32_t>(j));
    }
  };
  for (; i + kBlock <= n; i += kBlock) {
    std::int32_t any = 0;
    for (std::size_t j = 0; j < kBlock; ++j) {
      any |= static_cast<std::int32_t>(abs_bits(v[i + j])) >= t ? 1 : 0;
    }
    if (any) {
      for (std::size_t j = 0; j < kBlock; ++j) take(i + j);
    }
  }
  for (; i < n; ++i) take(i);
  return count;
}

std::size_t dgc_select_top(std::uint64_t* keys, std::size_t count, std::size_t k,
                           std::uint32_t* indices) {
  const std::size_t m = std::min(count, k);
  if (m == 0) return 0;
  if (count > m) std::nth_element(keys, keys + (m - 1), keys + count, std::greater<>());
  for (std::size_t j = 0; j < m; ++j) indices[j] = dgc_key_index(keys[j]);
  std::sort(indices, indices + m);
  return m;
}

void dgc_pack_f32(const std::uint32_t* indices, std::size_t count, float* v, float* u,
                  bool masking, float* values) {
  for (std::size_t j = 0; j < count; ++j) {
    const std::uint32_t i = indices[j];
    values[j] = v[i];
    v[i] = 0.0f;
    if (masking) u[i] = 0.0f;
  }
}

void dgc_pack_f16(const std::uint32_t* indices, std::size_t count, float* v, float* u,
                  bool masking, std::uint16_t* values) {
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
