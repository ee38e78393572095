// CUDA side of bucketed k-bit quantization: host-callable entry points (plain C++
// declarations, so code built without nvcc can include this). Payload layout, arithmetic
// and counter-based RNG are those of kernels/shared/quantize_math.h, shared with the CPU
// kernels, so payload, residual and decoded sum match the CPU bit for bit. Every call
// only enqueues work on `stream` (a cudaStream_t; nullptr: the legacy default stream).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/quantize_kernels.h"

namespace gradcomm::kernels::cuda {

// quantize_error_feedback on device buffers: g (n), residual (n, or null without error
// feedback), payload (quant::payload_bytes(n, bits, bucket)). The non-finite count is
// added to the device word *nonfinite (saturating at 2^32 - 1).
void quantize_error_feedback(const float* g, float* residual, std::size_t n, const QuantizeParams& params,
                             std::uint8_t* payload, std::uint32_t* nonfinite, void* stream);

// find_corrupt_payload on the device: the lowest bad rank goes to *bad_rank and
// quant::payload_fault_code of its first fault to *fault (device words, set to 0xffffffff
// before; `fault` may be null); both are left alone when every payload is valid.
void find_corrupt_payload(const std::uint8_t* payloads, std::size_t stride, int ranks, std::size_t n,
                          int bits, std::size_t bucket, std::uint32_t* bad_rank, std::uint32_t* fault,
                          void* stream);

// dequantize_sum on device buffers: `ranks` payloads `stride` bytes apart, summed in rank
// order, times scale. Where *bad_rank (device, from find_corrupt_payload; may be null) is
// set, out is written 0 instead. With `accumulate`, out += the sum instead of out = (on
// a skipped step a residual gets back what its payload took; scale 1).
void dequantize_sum(const std::uint8_t* payloads, std::size_t stride, int ranks, std::size_t n, int bits,
                    std::size_t bucket, float scale, float* out, const std::uint32_t* bad_rank,
                    bool accumulate, void* stream);

}  // namespace gradcomm::kernels::cuda
