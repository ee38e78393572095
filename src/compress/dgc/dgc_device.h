// DgcCompressor's CUDA layers: their u, v and threshold memory on their device, one
// sparse-encode workspace per device, and the calls into kernels/cuda/dgc_kernels.cuh.
//
// Every kernel and copy of encode, decode and on_step_skipped is enqueued on the
// ExecutionContext's stream: nothing here allocates or waits for the device in a step.
// For callers that drive the compressor without the StepEngine's device words, two
// fallbacks wait for the stream (compress/device_status.h): the non-finite count (encode
// then returns it) and a corrupt received payload (decode then throws, as on the CPU).
// State copies (save, load, the read-only views) wait too; they are not on the hot path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "gradcomm/compressor.h"
#include "kernels/shared/dgc_search.h"

namespace gradcomm::detail {

class DgcDevice {
 public:
  struct LayerShape {
    std::size_t layer = 0;  // index among the compressor's layers
    std::size_t numel = 0;
    int device = 0;
    bool sparse = false;        // can go sparse: keeps v and needs the workspace
    std::size_t max_slots = 0;  // the most slots any density gives it
  };
  // Allocates (zeroed) the state of every CUDA layer on its device. Throws kUnsupported
  // when gradcomm was built without CUDA.
  static std::unique_ptr<DgcDevice> create(std::span<const LayerShape> layers,
                                           std::size_t num_layers, std::size_t sample_stride,
                                           int rank);
  virtual ~DgcDevice() = default;

  virtual void set_execution(const ExecutionContext& context) = 0;

  // Encode steps; each returns the non-finite gradient elements when the context has no
  // device word for them (see above), else 0. clip_limit 0: no local clipping.
  virtual std::size_t encode_dense(std::size_t layer, const float* grad, double clip_limit,
                                   bool half, void* payload) = 0;
  virtual std::size_t encode_flush(std::size_t layer, const float* grad, double clip_limit,
                                   float momentum, bool nesterov, bool half, void* payload) = 0;
  // args: all but u, v, memory and stats, which are the layer's.
  virtual std::size_t encode_sparse(std::size_t layer, kernels::dgc::SparseEncodeArgs args,
                                    double clip_limit) = 0;

  virtual void decode_dense(std::size_t layer, const void* received, bool half, float inv_ranks,
                            float* out, bool momentum_after, float momentum, bool nesterov) = 0;
  // Returns the lowest rank whose payload failed validation (out is then 0), when the
  // context has no corrupt_payloads array (waiting for the stream); else, or when all are
  // valid, DeviceStatus::kNoCorruptRank.
  virtual std::uint32_t decode_sparse(std::size_t layer, const std::uint8_t* received, int ranks,
                                      std::size_t block_bytes, std::size_t k, bool half, float inv_ranks,
                                      float* out) = 0;
  virtual void restore_flush(std::size_t layer, const void* own_payload, bool half) = 0;
  virtual void restore_selected(std::size_t layer, const std::uint8_t* own_payload, std::size_t k,
                                bool half) = 0;

  // The layer's state where it lives, and host copies of it.
  virtual float* momentum(std::size_t layer) const = 0;
  virtual float* residual(std::size_t layer) const = 0;  // null for a layer that is never sparse
  virtual int device_of(std::size_t layer) const = 0;
  virtual void copy_out(std::size_t layer, std::vector<float>& u, std::vector<float>& v,
                        kernels::dgc::ThresholdMemory& memory) const = 0;
  virtual void copy_in(std::size_t layer, const std::vector<float>& u, const std::vector<float>& v,
                       const kernels::dgc::ThresholdMemory& memory) = 0;
  virtual kernels::dgc::SearchStats last_stats(std::size_t layer) const = 0;
  // Local clipping's factor of grad, left in device memory (L-GreCo's profiling scales as
  // encode does); enqueued on the context's stream.
  virtual const float* clip_factor(std::size_t layer, const float* grad, double clip_limit) = 0;
};

}  // namespace gradcomm::detail
