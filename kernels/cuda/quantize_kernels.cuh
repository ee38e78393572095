// CUDA side of bucketed k-bit quantization: host-callable entry points (plain C++
// declarations, so code built without nvcc can include this). Payload layout, arithmetic
// and counter-based RNG are those of kernels/cpu/quantize_kernels.h (shared through
// kernels/cpu/quantize_math.h with explicitly rounded operations), so payload, residual
// and decoded sum match the CPU bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/quantize_kernels.h"

namespace gradcomm::kernels::cuda {

// quantize_error_feedback on device buffers: g (n), residual (n, or null without error
// feedback), payload (quant::payload_bytes(n, bits, bucket)). `nonfinite`: a device
// counter the kernel adds this layer's non-finite count to (the caller zeroes and reads
// it, so the encode itself never synchronizes). `stream`: a cudaStream_t (null: default).
void quantize_error_feedback(const float* g, float* residual, std::size_t n, const QuantizeParams& params,
                             std::uint8_t* payload, unsigned long long* nonfinite, void* stream);

// dequantize_sum on device buffers: `ranks` payloads `stride` bytes apart, already
// validated (find_corrupt_payload on the host copy), summed in rank order, times scale.
void dequantize_sum(const std::uint8_t* payloads, std::size_t stride, int ranks, std::size_t n, int bits,
                    std::size_t bucket, float scale, float* out, void* stream);

}  // namespace gradcomm::kernels::cuda
