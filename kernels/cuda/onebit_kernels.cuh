// CUDA side of the 1-bit compressed allreduce: host-callable entry points (plain C++
// declarations, so src/ can include this without nvcc). Layouts and rounding are those
// of kernels/cpu/onebit_kernels.h; only the order in which the squared norms are summed
// differs (a fixed tree per launch, so results are deterministic run to run).
#pragma once

#include <cstddef>
#include <cstdint>

namespace gradcomm::kernels::cuda {

// Device scratch one tensor needs (norm partials, its scale, its non-finite count).
std::size_t onebit_scratch_bytes();

void* onebit_device_alloc(std::size_t bytes);
void onebit_device_free(void* ptr) noexcept;
void onebit_device_zero(void* ptr, std::size_t bytes);
void onebit_copy_to_host(void* dst, const void* src, std::size_t bytes);
void onebit_copy_to_device(void* dst, const void* src, std::size_t bytes);
void onebit_synchronize(void* stream);

// Worker side, fused (2 passes): x (n elements, 0 beyond) plus err (padded elements) is
// compressed; chunk j (padded / ranks elements) goes to base + j * stride as
// [fp32 scale][packed signs], and err becomes the compression error.
void onebit_worker_compress(const float* x, std::size_t n, float* err, std::size_t padded,
                            int ranks, std::uint8_t* base, std::size_t stride, void* scratch,
                            void* stream);

// Server side, fused: the ranks' segments (rank r's at segments + r * stride) are unpacked,
// scaled, summed in rank order, divided by ranks and added to err (chunk elements); the
// result is recompressed into out_segment ([fp32 scale][signs]) and err keeps the error.
void onebit_server_compress(const std::uint8_t* segments, std::size_t stride, int ranks,
                            float* err, std::size_t chunk, std::uint8_t* out_segment,
                            void* scratch, void* stream);

// out[i] for i < n from the gathered segments (rank j's chunk at segments + j * stride).
void onebit_decode(const std::uint8_t* segments, std::size_t stride, int ranks, std::size_t chunk,
                   float* out, std::size_t n, void* stream);

// Non-finite inputs counted by the last onebit_worker_compress with this scratch
// (synchronizes the stream).
std::size_t onebit_read_nonfinite(const void* scratch, void* stream);

}  // namespace gradcomm::kernels::cuda
