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
  for (int r = 0; r < ranks; ++r) {
    const std::uint8_t* p = payloads + static_cast<std::size_t>(r) * stride;
    quant::PayloadFault fault = quant::header_fault(p, n, bits);
    for (std::size_t b = 0; b < nb && fault == quant::kFaultNone; ++b) {
      if (!quant::bucket_meta_valid(p, b, bits)) fault = quant::kFaultMeta;
    }
    if (fault == quant::kFaultNone) fault = quant::padding_fault(p, n, bits, bucket);
    if (fault != quant::kFaultNone) {
      *why = quant::payload_fault_text(fault);
      return r;
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
    if (m.unit == 0.0f) {
      for (std::size_t i = 0; i < len; ++i) sum = fadd(sum, quant::squared_error_unsent(xs[i], m));
    } else if (stochastic) {
      for (std::size_t i = 0; i < len; ++i) sum = fadd(sum, quant::stochastic_variance_term(xs[i], m));
      sum = fmul(sum, fmul(m.unit, m.unit));
    } else {
      for (std::size_t i = 0; i < len; ++i) sum = fadd(sum, quant::squared_error_nearest(xs[i], m, levels));
    }
    total += sum;
  }
  return total;
}

}  // namespace gradcomm::kernels
