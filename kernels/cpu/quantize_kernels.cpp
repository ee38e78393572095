#include "kernels/cpu/quantize_kernels.h"

#include <bit>

#define GRADCOMM_QUANT_ISA baseline
#include "kernels/cpu/quantize_kernels_impl.h"
#undef GRADCOMM_QUANT_ISA

namespace gradcomm::kernels {

static_assert(std::endian::native == std::endian::little,
              "the quantized wire format is little-endian; add byte swaps for this host");

#if GRADCOMM_QUANT_HAVE_AVX2
// Asked once: the CPU does not change under a running process.
bool use_avx2() {
  static const bool supported = __builtin_cpu_supports("avx2");
  return supported;
}
#else
namespace avx2 = baseline;
bool use_avx2() { return false; }
#endif


std::size_t quantize_workspace_bytes(std::size_t bucket) {
  return bucket * sizeof(float) + bucket;
}

std::size_t quantize_error_feedback(const float* g, float* residual, std::size_t n,
                                    const QuantizeParams& params, std::uint8_t* payload,
                                    void* workspace) {
  if (use_avx2()) return avx2::quantize(g, residual, n, params, payload, workspace);
  return baseline::quantize(g, residual, n, params, payload, workspace);
}

int find_corrupt_payload(const std::uint8_t* payloads, std::size_t stride, int ranks,
                         std::size_t n, int bits, std::size_t bucket, const char** why) {
  const std::size_t nb = quant::num_buckets(n, bucket);
  const std::size_t codes_at = quant::codes_offset(n, bucket);
  const std::size_t used = (n + 7) / 8 * static_cast<std::size_t>(bits);
  const std::size_t total = quant::code_bytes(n, bits);
  for (int r = 0; r < ranks; ++r) {
    const std::uint8_t* p = payloads + static_cast<std::size_t>(r) * stride;
    std::uint32_t header[2];
    std::memcpy(header, p, sizeof header);
    if (header[0] != quant::header_word(bits)) {
      *why = "header (magic, version or bit width) does not match this layer's setting";
      return r;
    }
    if (header[1] != static_cast<std::uint32_t>(n)) {
      *why = "header element count does not match the layer";
      return r;
    }
    for (std::size_t b = 0; b < nb; ++b) {
      float pair[2];
      std::memcpy(pair, p + quant::meta_offset() + 8 * b, sizeof pair);
      if (!quant::meta_valid(pair[0], pair[1], bits)) {
        *why = "bucket metadata (min, unit) is not finite, or unit < 0, or the top level overflows";
        return r;
      }
    }
    const std::uint8_t* codes = p + codes_at;
    if (const std::size_t tail = n % 8; tail != 0) {
      std::uint64_t w = 0;
      std::memcpy(&w, codes + used - bits, static_cast<std::size_t>(bits));
      if ((w >> (bits * static_cast<int>(tail))) != 0) {
        *why = "padding codes after the last element are not zero";
        return r;
      }
    }
    for (std::size_t i = used; i < total; ++i) {
      if (codes[i] != 0) {
        *why = "padding bytes after the codes are not zero";
        return r;
      }
    }
  }
  return -1;
}

void dequantize_sum(const std::uint8_t* payloads, std::size_t stride, int ranks, std::size_t n,
                    int bits, std::size_t bucket, float scale, float* out, void* workspace) {
  if (use_avx2()) return avx2::dequantize(payloads, stride, ranks, n, bits, bucket, scale, out, workspace);
  baseline::dequantize(payloads, stride, ranks, n, bits, bucket, scale, out, workspace);
}

void bucket_min_max(const float* x, std::size_t n, std::size_t bucket, float* mins, float* maxs) {
  for (std::size_t start = 0, b = 0; start < n; start += bucket, ++b) {
    baseline::min_max(x + start, std::min(bucket, n - start), mins + b, maxs + b);
  }
}

double quantize_squared_error(const float* x, std::size_t n, std::size_t bucket, int bits,
                              bool stochastic, const float* mins, const float* maxs) {
  const int levels = (1 << bits) - 1;
  double total = 0;
  for (std::size_t start = 0, b = 0; start < n; start += bucket, ++b) {
    const std::size_t len = std::min(bucket, n - start);
    const float* xs = x + start;
    const quant::BucketMeta m = quant::bucket_meta(mins[b], maxs[b], bits);
    float sum = 0;
    if (m.unit == 0.0f) {  // constant or not sent: the error is the distance to min
      for (std::size_t i = 0; i < len; ++i) {
        const float d = xs[i] - m.min;
        sum += d * d;
      }
    } else if (stochastic) {
      for (std::size_t i = 0; i < len; ++i) {
        const float t = (xs[i] - m.min) * m.inv_unit;
        const float f = t - static_cast<float>(static_cast<int>(t));
        sum += f * (1.0f - f);
      }
      sum *= m.unit * m.unit;
    } else {
      for (std::size_t i = 0; i < len; ++i) {
        const int q = quant::encode_value(xs[i], m, 0.5f, levels);
        const float d = xs[i] - quant::decode_value(q, m.min, m.unit);
        sum += d * d;
      }
    }
    total += sum;
  }
  return total;
}

}  // namespace gradcomm::kernels
