// CUDA side of DGC's sparse encode: host-callable entry points (plain C++ declarations, so
// code built without nvcc can include this). Arithmetic, keys and the payload layout are
// those of kernels/cpu/dgc_kernels.h and DgcCompressor:
//   uint32 count | uint32 index[k] | value[k] (fp32 or fp16) | zero padding to 8 bytes.
// The momentum update is written with explicitly rounded operations (no FMA contraction),
// so u and v match the CPU bit for bit, and so does the `exact` selection. The `sampled`
// selection follows the same rules (strided sample, threshold at about 1.3k, lowered by
// 0.8 below 0.8k, trimmed to the top k) without the CPU's fused candidate collection.
#pragma once

#include <cstddef>
#include <cstdint>

namespace gradcomm::kernels::cuda {

struct DgcEncodeArgs {
  const float* grad = nullptr;  // device, n
  float* u = nullptr;           // device, n
  float* v = nullptr;           // device, n
  std::size_t n = 0;
  std::size_t k = 0;  // slots
  float momentum = 0.9f;
  bool nesterov = false;
  bool masking = true;
  float grad_scale = 1.0f;
  bool exact = false;
  double density = 0.001;        // for the sample threshold
  std::size_t sample_start = 0;  // < sample stride
  bool half_values = false;
  void* payload = nullptr;  // device, dgc_payload_bytes(k, half_values)
};

struct DgcEncodeResult {
  std::size_t nonfinite = 0;
  std::size_t candidates = 0;
  std::size_t sent = 0;
  int rounds = 0;
  std::uint32_t threshold_bits = 0;
};

class DgcWorkspace;
// One sparse encode on `stream` (a cudaStream_t; nullptr: the default stream). Reads the
// candidate count back to the host, so it synchronizes the stream once per round.
DgcEncodeResult dgc_encode(const DgcEncodeArgs& args, DgcWorkspace& workspace, void* stream);

// Device buffers for layers of up to max_numel elements, allocated once (CUB's temporary
// storage included); the encode never allocates.
class DgcWorkspace {
 public:
  DgcWorkspace(std::size_t max_numel, std::size_t sample_stride);
  ~DgcWorkspace();
  DgcWorkspace(const DgcWorkspace&) = delete;
  DgcWorkspace& operator=(const DgcWorkspace&) = delete;

  std::size_t max_numel() const noexcept { return max_numel_; }
  std::size_t sample_stride() const noexcept { return sample_stride_; }

 private:
  friend DgcEncodeResult dgc_encode(const DgcEncodeArgs& args, DgcWorkspace& workspace,
                                    void* stream);
  void release() noexcept;
  std::size_t max_numel_ = 0;
  std::size_t sample_stride_ = 0;
  std::uint64_t* keys_ = nullptr;      // max_numel
  std::uint64_t* keys_alt_ = nullptr;  // max_numel (radix sort output)
  std::uint32_t* indices_ = nullptr;   // max_numel
  std::uint32_t* indices_alt_ = nullptr;
  std::uint32_t* samples_ = nullptr;  // max_numel / stride + 1
  std::uint32_t* samples_alt_ = nullptr;
  unsigned long long* counters_ = nullptr;  // [non-finite, candidates]
  void* temp_ = nullptr;
  std::size_t temp_bytes_ = 0;
};

std::size_t dgc_payload_bytes(std::size_t k, bool half_values);

}  // namespace gradcomm::kernels::cuda
