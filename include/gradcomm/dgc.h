// DgcCompressor: Deep Gradient Compression (Lin et al., ICLR 2018) as a gradcomm::Compressor,
// and DgcSgd, the plain SGD step that goes after it.
//
// Per layer and rank the compressor keeps u (momentum) and v (accumulated velocity). Each
// step it applies momentum correction (paper Eq. 7), selects about k = ceil(density * n)
// of the largest |v|, sends them as exactly k (index, value) slots through one fixed-size
// allgather, keeps everything not sent in v (error feedback, nothing lost), and masks the
// momentum at the sent indices (Eq. 9). Tensors marked dense (1-D by default) and layers
// where the sparse gather would move more bytes than a dense allreduce are allreduced;
// their momentum is applied after the average, as in the reference code.
//
// Wire format of a sparse layer (one rank's payload, docs/algorithms/dgc.md):
//   uint32 count | uint32 index[k] | value[k] (fp32 or fp16) | zero padding to 8 bytes
// Slots [0, count) hold strictly increasing indices < n; slots [count, k) hold the
// sentinel index 0xffffffff with value 0. decode() checks all of this before writing.
//
// A layer on a CUDA device (LayerSpec::device) keeps u and v there, allocated once at
// setup, and runs encode, decode and on_step_skipped as kernels on the stream of
// set_execution()'s ExecutionContext: in a step nothing is allocated and the host never
// waits for the device (the threshold search runs under device-side control). The
// non-finite count goes to ExecutionContext::nonfinite_counts and a corrupt received
// payload to corrupt_payloads (the update is then 0); without those arrays encode and
// decode wait for the stream to return the count or throw. The CUDA path sends bitwise
// the CPU's payload for the same gradient and state (with local clipping: the same
// factor, which the GPU may round differently in its last bit). The layers of one device
// share a workspace: their kernels must stay on the one stream (as the StepEngine does).
// save_state, load_state and the read-only views copy the device state (they wait).
// docs/algorithms/dgc.md, "CUDA".
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "gradcomm/compressor.h"

namespace gradcomm {

namespace detail {
class DgcDevice;
}  // namespace detail

enum class DgcSelection : std::uint8_t {
  kSampled,  // threshold from a strided sample of |v|, refined (the default)
  kExact,    // the true top-k of |v|, ties broken by the lower index
};
const char* dgc_selection_name(DgcSelection selection) noexcept;
DgcSelection parse_dgc_selection(const std::string& name);  // "sampled" or "exact"

struct DgcOptions {
  // Density in force once warm-up is over: k = ceil(density * n) slots per rank.
  double density = 0.001;
  // Densities of the first warm-up epochs (epoch e uses warmup_densities[e]); the paper's
  // 4^-(e+1) schedule by default. Empty: the target density from the first step. A
  // warm-up never sends less than what follows it: an epoch whose warm-up density is at or
  // below the target (`density`, or a layer's own, set_layer_density) runs at the target.
  // So every caller passes the schedule it was given, whatever the target, and all agree
  // (dgc_warmup_epochs() says when the warm-up is over).
  std::vector<double> warmup_densities = {0.25, 0.0625, 0.015625, 0.004};
  // When > 0, the Exchanger's step drives the schedule: epoch = step / steps_per_epoch
  // (set_epoch() is then refused). When 0, the trainer calls set_epoch().
  std::int64_t steps_per_epoch = 0;

  float momentum = 0.9f;  // m in u = m*u + g
  bool nesterov = false;  // u = m*(u + g); v = v + u + g
  // Momentum factor masking (paper Eq. 9): u = 0 at the sent indices.
  bool momentum_masking = true;
  // Local gradient clipping (paper Eq. 8): when > 0, each layer's local gradient is scaled
  // so its L2 norm is at most clip_norm / sqrt(world size). Costs one extra read pass.
  float clip_norm = 0.0f;

  DgcSelection selection = DgcSelection::kSampled;
  // Fraction of |v| sampled (strided, random start) to estimate the threshold.
  double sample_fraction = 0.01;
  std::uint64_t seed = 0x5eed;  // sample start offsets: counter-based, per layer and rank

  DType value_dtype = DType::kFloat32;  // sparse values on the wire: kFloat32 or kFloat16
  DType dense_dtype = DType::kFloat32;  // dense tensors on the wire: kFloat32 or kFloat16
  // Switch a layer to a dense allreduce when the sparse gather would move more bytes
  // (k/n > 1/p with fp32 values). Off: every layer not marked dense stays sparse.
  bool dense_fallback = true;
  // The largest density set_layer_density() may give a layer (0: `density`). Only sizes
  // the payload bound (max_payload_bytes), so the Exchanger's workspace covers it.
  double max_layer_density = 0.0;
  // How sparse layers cross the ranks (set_layer_exchange() changes it per layer):
  // kAllgather sends every rank's k slots to every rank; kReduceScatter runs the sparse
  // allreduce (docs/algorithms/sparse-allreduce.md): about 2k slots per rank whatever the
  // ranks, the global selection per region, what a rank sent and the selection dropped back
  // into its v; kDense allreduces the layer (momentum applied after the average).
  SparseExchange exchange = SparseExchange::kAllgather;
};

// The epochs before the density is `options.density` for good: one past the last warm-up
// density above it (0: no warm-up in effect). E.g. L-GreCo starts planning after them.
std::size_t dgc_warmup_epochs(const DgcOptions& options);

// What the last encode() of a sparse layer did (for logs, tests and benchmarks).
struct DgcLayerStats {
  std::size_t k = 0;           // slots
  std::size_t sent = 0;        // slots filled
  std::size_t candidates = 0;  // elements at or above the final threshold
  float threshold = 0.0f;      // the threshold the candidates were collected at
  int rounds = 0;              // passes over v (1: the fused pass was enough)
};

class DgcCompressor final : public Compressor {
 public:
  // Validates the options (throws kInvalidArgument naming the bad setting).
  explicit DgcCompressor(DgcOptions options = {});
  ~DgcCompressor() override;
  DgcCompressor(DgcCompressor&&) noexcept;
  DgcCompressor& operator=(DgcCompressor&&) noexcept;

  std::string name() const override { return "dgc"; }
  void setup(std::span<const LayerSpec> layers, int world_size, int rank) override;
  std::string settings_fingerprint() const override;
  std::size_t max_payload_bytes(std::size_t layer) const override;
  LayerWire wire(std::size_t layer) const override;
  EncodeResult encode(std::size_t layer, TensorView grad, TensorView payload) override;
  void decode(std::size_t layer, TensorView received, TensorView out) override;
  void decode_selection(std::size_t layer, TensorView own_payload, TensorView indices, TensorView sums,
                        TensorView out) override;
  bool set_layer_exchange(std::size_t layer, SparseExchange exchange) override;
  void on_step_skipped(std::size_t layer, TensorView own_payload) override;
  void set_execution(const ExecutionContext& context) override;
  void set_step(std::int64_t step) override;
  void set_epoch(std::int64_t epoch) override;
  std::vector<std::byte> save_state() const override;
  void load_state(std::span<const std::byte> blob) override;

  const DgcOptions& options() const noexcept { return options_; }
  // The density in force for the current epoch, for layers without their own.
  double density() const;
  // Layer `layer`'s own density once warm-up is over (L-GreCo's per-layer plan); during
  // warm-up every layer follows warmup_densities. Keeps u and v: nothing is lost, and
  // nothing is allocated. At most max_layer_density (or density). A setting, not state:
  // save_state() does not carry it; whoever sets it restores it (LgrecoCompressor does).
  void set_layer_density(std::size_t layer, double density);
  // The density `layer` uses this step.
  double layer_density(std::size_t layer) const;
  // How `layer` crosses the ranks when it is sparse (options.exchange unless set per layer).
  SparseExchange layer_exchange(std::size_t layer) const;
  // The payload bytes per rank `layer` would send at `density` (no warm-up): the sparse
  // gather, or the dense tensor where dense_fallback switches it.
  std::size_t payload_bytes_at(std::size_t layer, double density) const;
  std::int64_t epoch() const noexcept { return epoch_; }
  // Slots per rank for `layer` now, and whether it goes sparse this step.
  std::size_t k(std::size_t layer) const;
  bool is_sparse(std::size_t layer) const;
  std::size_t num_layers() const noexcept { return layers_.size(); }

  // Read-only views of this rank's state (tests check error feedback with them). For a
  // layer on a CUDA device they are host copies made by the call (which waits for the
  // device), valid until the next call for that layer.
  std::span<const float> momentum(std::size_t layer) const;
  std::span<const float> residual(std::size_t layer) const;
  const DgcLayerStats& last_stats(std::size_t layer) const;
  // Local clipping's factor (paper Eq. 8) for a layer's gradient of n elements: encode
  // multiplies the gradient by it; 1 without clip_norm or when the norm is within bounds.
  float clip_scale(const float* grad, std::size_t n) const;

 private:
  friend class LgrecoCompressor;  // profiles u and v where they live

  struct Layer {
    std::size_t numel = 0;
    bool dense_always = false;
    double target = 0;  // density after warm-up (options.density unless set per layer)
    SparseExchange exchange = SparseExchange::kAllgather;
    Device device = Device::kCpu;
    int device_index = 0;
    std::vector<float> u, v;  // a CPU layer's state (a CUDA layer's is in device_)
    std::uint64_t rng_counter = 0;  // one draw per sparse encode
    // Bits of the last step's sample threshold (0: none yet): the next step collects
    // candidates at a threshold predicted from it inside the fused pass. A CUDA layer's
    // live on its device.
    std::uint32_t threshold_cache = 0;
    std::uint32_t threshold_before = 0;  // the one of the step before
    // u is per rank (the layer went sparse since its last dense step); the next dense
    // step flushes v and restarts u (see encode_dense).
    bool sparse_momentum = false;
    bool flushing = false;  // between that flushing encode and its decode
    // What the last encode took out of v, for on_step_skipped: nothing (a plain dense
    // step), all of v (a flush), or the selected entries (sparse).
    enum class Taken : std::uint8_t { kNothing, kAllOfV, kSelected } taken = Taken::kNothing;
    DgcLayerStats stats;
  };

  // The layer, after checking the index, that `tensor` has its size and lives where the
  // layer does.
  Layer& checked_layer(const char* call, std::size_t layer, TensorView tensor, const char* role);
  // The warm-up density of this epoch, or `after_warmup` once warm-up is over.
  double scheduled_density(double after_warmup) const;
  double density_of(const Layer& layer) const;
  std::size_t k_for(const Layer& layer, double density) const;
  bool sparse_for(const Layer& layer, std::size_t k) const;
  std::size_t sparse_payload_bytes(std::size_t k) const;
  double clip_limit() const;  // 0: no local clipping
  EncodeResult encode_dense(std::size_t index, Layer& layer, const float* grad, TensorView payload);
  // `mask_now`: momentum masking at packing time; the sparse allreduce masks in
  // decode_selection instead, where it knows which entries the selection kept.
  EncodeResult encode_sparse(std::size_t index, Layer& layer, const float* grad, std::size_t k,
                             TensorView payload, bool mask_now);
  void decode_dense(std::size_t index, Layer& layer, TensorView received, float* out);
  void decode_sparse(std::size_t index, const Layer& layer, TensorView received, float* out);
  // A CUDA layer's state copied into the host mirrors (u, v and the thresholds).
  const Layer& host_copy(std::size_t layer) const;

  DgcOptions options_;
  std::vector<Layer> layers_;
  std::size_t sample_stride_ = 1;  // round(1 / sample_fraction)
  int world_size_ = 1;
  int rank_ = 0;
  std::int64_t epoch_ = 0;
  std::int64_t step_ = 0;
  // Workspace shared by the CPU layers (encode runs one layer at a time), sized at setup.
  // Candidates, (|v| bits << 32) | ~index, room for the largest layer. Left uninitialized:
  // a step writes about 1.3k of them, so only those pages are ever touched.
  std::unique_ptr<std::uint64_t[]> keys_;
  std::unique_ptr<std::uint64_t[]> scratch_;  // the selection's copy of the keys
  std::vector<std::uint32_t> samples_;        // sampled |v| bits
  // The CUDA layers (null without any); kernels run on execution_'s stream.
  std::unique_ptr<detail::DgcDevice> device_;
  ExecutionContext execution_;
  mutable std::vector<Layer> host_copies_;  // momentum()/residual() of CUDA layers
};

struct DgcSgdOptions {
  float lr = 0.1f;
  float weight_decay = 0.0f;  // applied locally to the parameter, never compressed
};

// Plain SGD on the exchanged DGC update (momentum already lives in the compressor):
// param -= lr * (update + weight_decay * param).
class DgcSgd {
 public:
  explicit DgcSgd(DgcSgdOptions options = {});
  void step(std::span<float> param, std::span<const float> update) const;
  void set_lr(float lr);
  const DgcSgdOptions& options() const noexcept { return options_; }

 private:
  DgcSgdOptions options_;
};

}  // namespace gradcomm
