// CUDA side of the 1-bit compressed allreduce: host-callable entry points (plain C++
// declarations, so src/ can include this without nvcc). Layouts and element arithmetic
// are those of kernels/shared/onebit_math.h, shared with the CPU kernels; only the order
// in which the squared norms are summed differs (a fixed tree per launch, so results are
// deterministic run to run). Every call only enqueues work on `stream` (a cudaStream_t;
// nullptr: the legacy default stream).
#pragma once

#include <cstddef>
#include <cstdint>

namespace gradcomm::kernels::cuda {

// Device scratch one tensor needs (norm partials and its scale).
std::size_t onebit_scratch_bytes();

// Worker side, fused (2 passes): x (n elements, 0 beyond) plus err (padded elements) is
// compressed; chunk j (padded / ranks elements) goes to base + j * stride as
// [fp32 scale][packed signs], and err becomes the compression error. The non-finite
// elements of x are added to the device word *nonfinite (saturating).
void onebit_worker_compress(const float* x, std::size_t n, float* err, std::size_t padded,
                            int ranks, std::uint8_t* base, std::size_t stride, void* scratch,
                            std::uint32_t* nonfinite, void* stream);

// Copies the fp32 scale heading each of `count` segments (segments + j * stride) to
// scales[j] (device) and, where one is not a finite value >= 0, sets *bad (device) to 1:
// the kernels given `bad` then leave their outputs alone.
void onebit_gather_scales(const std::uint8_t* segments, std::size_t stride, std::size_t count,
                          float* scales, std::uint32_t* bad, void* stream);

// Server side, fused: the ranks' segments (rank r's at segments + r * stride) are unpacked,
// scaled, summed in rank order, divided by ranks and added to err (chunk elements); the
// result is recompressed into out_segment ([fp32 scale][signs]) and err keeps the error.
// Does nothing while *bad is set.
void onebit_server_compress(const std::uint8_t* segments, std::size_t stride, int ranks,
                            float* err, std::size_t chunk, std::uint8_t* out_segment,
                            void* scratch, const std::uint32_t* bad, void* stream);

// out[i] for i < n from the gathered segments (rank j's chunk at segments + j * stride).
// Does nothing while *bad is set.
void onebit_decode(const std::uint8_t* segments, std::size_t stride, std::size_t chunk, float* out,
                   std::size_t n, const std::uint32_t* bad, void* stream);

}  // namespace gradcomm::kernels::cuda
