// Where a CUDA layer's kernels report what the host must act on: the non-finite count
// (encode) and the first corrupt rank (decode). The StepEngine gives device arrays for
// both in the ExecutionContext, read once at the end of the step; a caller without them
// (a test, a direct user) gets this object's own words on the device, read back by
// waiting for the stream, so encode still returns the count and decode still throws.
// Defined only with CUDA (the declarations compile everywhere).
#pragma once

#include <cstddef>
#include <cstdint>

#include "gradcomm/compressor.h"
#include "kernels/cuda/device_buffer.cuh"

namespace gradcomm::detail {

class DeviceStatus {
 public:
  static constexpr std::uint32_t kNoCorruptRank = 0xffffffffu;

  explicit DeviceStatus(int device);

  // The word encode of `layer` adds its non-finite count to, and the count afterwards
  // (0 when it went to the engine's array). Enqueued on context.cuda_stream.
  std::uint32_t* nonfinite_word(const ExecutionContext& context, std::size_t layer);
  std::size_t nonfinite_after(const ExecutionContext& context) const;

  // The word decode of `layer` writes the lowest corrupt rank to, and what it holds
  // afterwards (kNoCorruptRank when it went to the engine's array).
  std::uint32_t* corrupt_word(const ExecutionContext& context, std::size_t layer);
  std::uint32_t corrupt_after(const ExecutionContext& context) const;
  // A word of this object for the compressor's own reason code (reset to 0xffffffff,
  // kept on the device; read back only where corrupt_after found a rank).
  std::uint32_t* reason_word(const ExecutionContext& context);
  std::uint32_t reason_after(const ExecutionContext& context) const;

 private:
  kernels::cuda::DeviceBuffer words_;  // [non-finite, corrupt rank, reason]
};

// The error of a compressor's setup meeting a CUDA layer in a build without CUDA.
[[noreturn]] void throw_without_cuda(const char* compressor, int rank);

}  // namespace gradcomm::detail
