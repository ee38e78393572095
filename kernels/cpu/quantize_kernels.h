// CPU kernels of bucketed max-min k-bit quantization (the reference the CUDA kernels match
// bitwise). Plain pointers and counts: no allocation, no communication.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/shared/quantize_math.h"

// x86-64 with GCC or clang: an AVX2 copy of the hot loops is built and picked at run time.
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define GRADCOMM_QUANT_HAVE_AVX2 1
#else
#define GRADCOMM_QUANT_HAVE_AVX2 0
#endif

namespace gradcomm::kernels {

struct QuantizeParams {
  int bits = 4;                 // 1..8
  std::size_t bucket = 512;     // elements per bucket, a multiple of 8
  bool stochastic = false;      // uniform dither instead of 0.5
  std::uint64_t rng_key = 0;    // quant::rng_key(seed, rank, layer, step)
};

// Scratch one quantize call needs (reused across calls): bucket floats and bucket bytes.
std::size_t quantize_workspace_bytes(std::size_t bucket);

// Error-fed quantization of one layer of n elements:
//   x = (finite(g) ? g : 0) + residual        (residual may be null: no error feedback)
//   per bucket: min, unit from the range of x; codes q = floor((x - min)/unit + r)
//   residual = x - (min + q * unit)           (what was not sent stays)
// Writes the whole payload (header, metadata, codes and zero padding) into `payload`
// (quant::payload_bytes(n, bits, bucket) bytes). An x that overflows to Inf is zeroed and
// counted with the non-finite inputs. Returns that count.
std::size_t quantize_error_feedback(const float* g, float* residual, std::size_t n,
                                    const QuantizeParams& params, std::uint8_t* payload,
                                    void* workspace);

// Checks `ranks` payloads (each `stride` bytes apart) for this layer's shape: header magic,
// version, bits and numel, every bucket's metadata (finite, unit >= 0, finite top level)
// and zero padding. Returns the index of the first bad rank, or -1 when all are valid;
// `why` then names the failed check.
int find_corrupt_payload(const std::uint8_t* payloads, std::size_t stride, int ranks,
                         std::size_t n, int bits, std::size_t bucket, const char** why);

// out = (sum over ranks r = 0..ranks-1, in order, of dequantize(payload r)) * scale.
// Payloads must have passed find_corrupt_payload. `workspace`: quantize_workspace_bytes.
void dequantize_sum(const std::uint8_t* payloads, std::size_t stride, int ranks, std::size_t n,
                    int bits, std::size_t bucket, float scale, float* out, void* workspace);

// Per bucket min and max of x (n elements): the shared first pass of profiling.
void bucket_min_max(const float* x, std::size_t n, std::size_t bucket, float* mins, float* maxs);

// Squared L2 error of quantizing x with `bits` given the bucket ranges from bucket_min_max.
// Nearest rounding: the exact error of what the encoder would send. Stochastic: its
// expectation, sum of unit^2 * f * (1 - f) with f the fractional position of x between
// two levels (deterministic, no draws).
double quantize_squared_error(const float* x, std::size_t n, std::size_t bucket, int bits,
                              bool stochastic, const float* mins, const float* maxs);

// The two builds behind quantize_error_feedback and dequantize_sum, named so tests can
// check that they agree bitwise. avx2:: needs a CPU with AVX2 (use_avx2()).
bool use_avx2();
namespace baseline {
std::size_t quantize(const float* g, float* residual, std::size_t n, const QuantizeParams& params,
                     std::uint8_t* payload, void* workspace);
void dequantize(const std::uint8_t* payloads, std::size_t stride, int ranks, std::size_t n, int bits,
                std::size_t bucket, float scale, float* out, void* workspace);
}  // namespace baseline
#if GRADCOMM_QUANT_HAVE_AVX2
namespace avx2 {
std::size_t quantize(const float* g, float* residual, std::size_t n, const QuantizeParams& params,
                     std::uint8_t* payload, void* workspace);
void dequantize(const std::uint8_t* payloads, std::size_t stride, int ranks, std::size_t n, int bits,
                std::size_t bucket, float scale, float* out, void* workspace);
}  // namespace avx2
#endif

}  // namespace gradcomm::kernels
