// CUDA side of Deep Gradient Compression: host-callable entry points (plain C++
// declarations, so code built without nvcc can include this). The arithmetic is that of
// kernels/shared/dgc_math.h and the threshold search that of kernels/shared/dgc_search.h,
// shared with the CPU kernels: given the same inputs (and, with local clipping, the same
// factor) u, v and the payload are the CPU's bit for bit, for both selections.
//
// Every call only enqueues work on `stream` (a cudaStream_t; nullptr: the legacy default
// stream): no call reads anything back to the host, synchronises or allocates. The
// threshold search runs its rounds under device-side control: each round's kernel reads
// the search state the previous one left in device memory and does nothing once the
// search is done; the final selection is a radix select over the candidate buffer.
// Non-finite counts are added to a device word, saturating at 2^32 - 1.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/shared/dgc_search.h"

namespace gradcomm::kernels::cuda {

struct DgcWorkspaceState;  // the search state in device memory (dgc_kernels.cu)

// Device scratch for layers of up to max_numel elements and max_slots slots on one
// device, allocated once (CUB's temporary storage included).
class DgcWorkspace {
 public:
  DgcWorkspace(std::size_t max_numel, std::size_t max_slots, std::size_t sample_stride, int device);
  ~DgcWorkspace();
  DgcWorkspace(const DgcWorkspace&) = delete;
  DgcWorkspace& operator=(const DgcWorkspace&) = delete;

  std::size_t max_numel() const noexcept { return max_numel_; }
  std::size_t max_slots() const noexcept { return max_slots_; }
  std::size_t sample_stride() const noexcept { return sample_stride_; }
  int device() const noexcept { return device_; }
  // A device float the clipping factor of the last dgc_clip_scale lands in.
  float* clip_scale() const noexcept { return clip_scale_; }

 private:
  friend struct DgcWorkspaceAccess;
  void release() noexcept;
  std::size_t max_numel_ = 0;
  std::size_t max_slots_ = 0;
  std::size_t sample_stride_ = 1;
  int device_ = 0;
  std::uint64_t* keys_ = nullptr;         // max_numel: the candidate buffer
  std::uint32_t* samples_ = nullptr;      // sample_count(max_numel, 0, stride)
  std::uint32_t* samples_sorted_ = nullptr;
  std::uint32_t* selected_ = nullptr;     // max_slots: the chosen indices, unsorted
  DgcWorkspaceState* state_ = nullptr;
  double* partials_ = nullptr;            // clipping's per-block sums of squares
  float* clip_scale_ = nullptr;
  void* temp_ = nullptr;                  // CUB's sorts
  std::size_t temp_bytes_ = 0;
};

// One sparse encode (the CPU's kernels::dgc_encode_sparse, on device memory; args.memory
// and args.stats point to device memory, args.grad_scale_at may). Non-finite gradient
// elements are added to *nonfinite (device).
void dgc_encode_sparse(const dgc::SparseEncodeArgs& args, DgcWorkspace& workspace,
                       std::uint32_t* nonfinite, void* stream);

// Local clipping's factor (dgc::clip_factor) of grad into workspace.clip_scale(): the sum
// of squares of the finite elements in double, in a fixed order (deterministic, but not
// the CPU's order: the factor may differ from the CPU's in its last bit).
void dgc_clip_scale(const float* grad, std::size_t n, double limit, DgcWorkspace& workspace,
                    void* stream);

// A dense step: payload = dgc::scaled_or_zero(grad, *scale) (fp32, or fp16 when `half`;
// scale null: 1).
void dgc_dense_payload(const float* grad, std::size_t n, const float* scale, bool half,
                       void* payload, std::uint32_t* nonfinite, void* stream);

// The flush of the first dense step after sparse ones: momentum correction (scale as
// above), then payload = all of v, and u = v = 0.
void dgc_flush(const float* grad, float* u, float* v, std::size_t n, float momentum, bool nesterov,
               const float* scale, bool half, void* payload, std::uint32_t* nonfinite, void* stream);

// A dense decode: out = received * inv_ranks (received fp32, or fp16 when `half`), then,
// with `momentum_after`, dgc::dense_momentum on u.
void dgc_dense_decode(const void* received, bool half, std::size_t n, float inv_ranks, float* out,
                      bool momentum_after, float* u, float momentum, bool nesterov, void* stream);

// A sparse decode of `ranks` blocks `block_bytes` apart: every block is validated first
// (count <= k, dgc::slot_valid); if any fails, the smallest failing rank is written to
// *bad_rank (device; set it to 0xffffffff before) and out is left 0. Otherwise out = the
// rank-order sum of dgc::average_term, the CPU's order for every index.
void dgc_sparse_decode(const std::uint8_t* received, int ranks, std::size_t block_bytes,
                       std::size_t k, bool half, std::size_t n, float inv_ranks, float* out,
                       std::uint32_t* bad_rank, void* stream);

// on_step_skipped: v gets back what the payload took: all of v (a flush), or the
// selected entries of a sparse payload (k slots).
void dgc_restore_flush(const void* own_payload, bool half, std::size_t n, float* v, void* stream);
void dgc_restore_selected(const std::uint8_t* own_payload, std::size_t k, bool half, std::size_t n,
                          float* v, void* stream);

}  // namespace gradcomm::kernels::cuda
