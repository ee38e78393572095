// CUDA side of L-GreCo's profiling (docs/algorithms/lgreco.md): the error each candidate
// setting would make on a layer, computed where the layer lives. Host-callable entry
// points (plain C++ declarations) that only enqueue work on `stream` (a cudaStream_t;
// nullptr: the legacy default stream) and write one row of the error table in device
// memory; the element arithmetic is the CPU profile's (kernels/shared/quantize_math.h,
// dgc_math.h, lgreco_math.h), the float and double sums are taken in another (fixed)
// order, so the errors agree with the CPU's to rounding.
#pragma once

#include <cstddef>
#include <cstdint>

namespace gradcomm::kernels::cuda {

// Device scratch for layers of up to max_numel elements, sample_max samples and
// `candidates` settings (allocated once).
class LgrecoWorkspace {
 public:
  LgrecoWorkspace(std::size_t max_numel, std::size_t bucket, std::size_t candidates, std::size_t sample_max,
                  int device);
  ~LgrecoWorkspace();
  LgrecoWorkspace(const LgrecoWorkspace&) = delete;
  LgrecoWorkspace& operator=(const LgrecoWorkspace&) = delete;

  float* bucket_errors() const noexcept { return bucket_errors_; }  // [bucket][candidate]
  double* partials() const noexcept { return partials_; }
  float* samples() const noexcept { return samples_; }
  float* sorted() const noexcept { return sorted_; }
  double* densities() const noexcept { return densities_; }  // the DGC family's, set once
  void* temp() const noexcept { return temp_; }
  std::size_t temp_bytes() const noexcept { return temp_bytes_; }

 private:
  void release() noexcept;
  float* bucket_errors_ = nullptr;
  double* partials_ = nullptr;
  float* samples_ = nullptr;
  float* sorted_ = nullptr;
  double* densities_ = nullptr;
  void* temp_ = nullptr;
  std::size_t temp_bytes_ = 0;
};

// Quantization family: errors[c] = the L2 error of quantizing x = finite(g) + residual
// (residual null: none) with bits[c] (c < count <= 8), exact for nearest rounding, the
// expectation for stochastic.
struct BitWidths {
  int count = 0;
  int bits[8] = {};
};
void lgreco_quant_errors(const float* grad, const float* residual, std::size_t n, std::size_t bucket,
                         BitWidths widths, bool stochastic, double* errors, LgrecoWorkspace& workspace,
                         void* stream);

// DGC family: x = v after momentum correction of finite(g) * *scale (scale null: 1), from
// u and v, left untouched; errors[c] = the estimated ||x - topk(x)|| at the workspace's
// densities[c] (c < count), from a strided sample of `samples` |x| (samples <= n, the
// stride n / samples, as the CPU's lgreco_topk_errors).
void lgreco_dgc_errors(const float* grad, const float* scale, const float* u, const float* v, std::size_t n,
                       float momentum, bool nesterov, std::size_t samples, std::size_t top, std::size_t count,
                       double* errors, LgrecoWorkspace& workspace, void* stream);

// Copies `count` densities to the workspace (setup; waits for the stream).
void lgreco_set_densities(LgrecoWorkspace& workspace, const double* densities, std::size_t count, void* stream);

}  // namespace gradcomm::kernels::cuda
