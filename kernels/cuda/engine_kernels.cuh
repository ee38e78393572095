// The StepEngine's own kernels for layers on a CUDA device: framing a group from the
// per-layer non-finite counts the compressors added on the device (so no count crosses to
// the host before the collective), and the float16/bfloat16 edges. Host-callable C++
// declarations; the framing is that of docs/wire-format.md, the conversions those of
// src/core/float16.h (the same functions the CPU path calls).
#pragma once

#include <cstddef>
#include <cstdint>

namespace gradcomm::kernels::cuda {

// Allreduce group: status element i (float32, or float16 when `half`) = 1 where
// counts[layers_in_order[first + i]] != 0, else 0, for the group's `layers` layers, which
// sit at positions [first, first + layers) of the step's order (device memory: position ->
// layer index).
void frame_allreduce_status(const std::uint32_t* counts, const std::uint32_t* layers_in_order,
                            std::size_t first, std::size_t layers, void* status, bool half, void* stream);

// Allgather group: header words [layers, counts of the layers as above], then zero words
// up to `header_words`.
void frame_allgather_header(const std::uint32_t* counts, const std::uint32_t* layers_in_order,
                            std::size_t first, std::size_t layers, std::uint32_t* header,
                            std::size_t header_words, void* stream);

// out = float32(in) / in = dtype(out) for float16 (bfloat16 = false) or bfloat16.
void widen_to_f32(const std::uint16_t* in, bool bfloat16, float* out, std::size_t n, void* stream);
void narrow_from_f32(const float* in, bool bfloat16, std::uint16_t* out, std::size_t n, void* stream);

}  // namespace gradcomm::kernels::cuda
