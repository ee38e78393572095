// OneBitAdam (docs/algorithms/onebit-adam.md): dense Adam for freeze_step steps, then frozen
// variance and 1-bit compressed momentum exchange.
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "core/state_blob.h"
#include "gradcomm/agreement.h"
#include "gradcomm/layer.h"
#include "gradcomm/onebit.h"

namespace gradcomm {
namespace {

constexpr std::uint32_t kAdamMagic = 0x41314347u;  // "GC1A"
constexpr std::uint32_t kAdamVersion = 1;

bool finite_nonneg(float x) { return std::isfinite(x) && x >= 0.0f; }

}  // namespace

struct OneBitAdam::Impl {
  std::vector<OneBitParam> params;
  std::vector<std::vector<float>> m, v;
  // Warm-up gradients of all params, uncompressed params first so that in the
  // compression stage their allreduce is one prefix of the same buffer.
  std::vector<float> dense;
  std::vector<std::size_t> dense_offset;  // by param
  std::size_t uncompressed_numel = 0;
  // Compressed params, in registration order: their error states and the fused call.
  std::vector<std::size_t> compressed;  // index -> param
  std::vector<OneBitErrorState> states;
  std::vector<OneBitErrorState*> state_ptrs;
  std::vector<TensorView> exchanged;     // m, or the preconditioned copy below
  std::vector<std::vector<float>> preconditioned;  // by compressed index (precondition only)
  std::vector<std::size_t> state_of;     // param -> compressed index, or npos
  std::vector<std::byte> workspace;
};

OneBitAdam::OneBitAdam(Communicator& comm, std::vector<OneBitParam> params, OneBitAdamOptions options)
    : comm_(comm), options_(options), impl_(std::make_unique<Impl>()) {
  const OneBitAdamOptions& o = options_;
  GRADCOMM_CHECK_ARG(finite_nonneg(o.lr), "OneBitAdam: lr ", o.lr, " must be finite and >= 0");
  GRADCOMM_CHECK_ARG(o.beta1 >= 0.0f && o.beta1 < 1.0f, "OneBitAdam: beta1 ", o.beta1,
                     " must be in [0, 1)");
  GRADCOMM_CHECK_ARG(o.beta2 >= 0.0f && o.beta2 < 1.0f, "OneBitAdam: beta2 ", o.beta2,
                     " must be in [0, 1)");
  GRADCOMM_CHECK_ARG(std::isfinite(o.eps) && o.eps > 0.0f, "OneBitAdam: eps ", o.eps,
                     " must be finite and > 0");
  GRADCOMM_CHECK_ARG(finite_nonneg(o.weight_decay), "OneBitAdam: weight_decay ", o.weight_decay,
                     " must be finite and >= 0");
  GRADCOMM_CHECK_ARG(o.freeze_step >= 0, "OneBitAdam: freeze_step ", o.freeze_step, " must be >= 0");
  GRADCOMM_CHECK_ARG(comm.device() == Device::kCpu, "OneBitAdam: ", comm.describe(),
                     " takes device buffers; OneBitAdam updates host parameters");

  Impl& s = *impl_;
  s.params = std::move(params);
  const std::size_t count = s.params.size();
  const int p = comm.size();
  std::vector<LayerSpec> layers;
  layers.reserve(count);
  for (std::size_t i = 0; i < count; ++i) {
    const OneBitParam& param = s.params[i];
    GRADCOMM_CHECK_ARG(param.value.dtype() == DType::kFloat32 && param.value.device() == Device::kCpu,
                       "OneBitAdam: parameter ", i, " ('", param.name, "') is ",
                       param.value.describe(), "; expected float32 on cpu");
    GRADCOMM_CHECK_ARG(param.mask.empty() || param.compressed, "OneBitAdam: parameter ", i, " ('",
                       param.name, "') is uncompressed; its mask would never apply (masks zero "
                       "momentum after the 1-bit exchange only)");
    GRADCOMM_CHECK_ARG(param.mask.empty() || param.mask.size() == param.value.numel(),
                       "OneBitAdam: parameter ", i, " ('", param.name, "') has ", param.value.numel(),
                       " elements but a mask of ", param.mask.size());
    for (std::size_t k = 0; k < param.mask.size(); ++k) {
      GRADCOMM_CHECK_ARG(param.mask[k] == 0.0f || param.mask[k] == 1.0f, "OneBitAdam: mask of '",
                         param.name, "' holds ", param.mask[k], " at ", k, "; only 0 and 1 are allowed");
    }
    layers.push_back({param.name, param.value.numel(), 1, !param.compressed});
  }
  check_agreement(comm, layers,
                  "onebit-adam freeze_step=" + std::to_string(o.freeze_step) +
                      " bias_correction=" + std::to_string(o.bias_correction) +
                      " precondition=" + std::to_string(o.precondition),
                  "OneBitAdam setup");

  s.m.resize(count);
  s.v.resize(count);
  s.dense_offset.resize(count);
  s.state_of.assign(count, std::numeric_limits<std::size_t>::max());
  std::size_t offset = 0;
  for (int pass = 0; pass < 2; ++pass) {  // uncompressed first, then compressed
    for (std::size_t i = 0; i < count; ++i) {
      if (s.params[i].compressed != (pass == 1)) continue;
      s.dense_offset[i] = offset;
      offset += s.params[i].value.numel();
    }
    if (pass == 0) s.uncompressed_numel = offset;
  }
  s.dense.assign(offset, 0.0f);
  std::vector<std::size_t> numels;
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t n = s.params[i].value.numel();
    s.m[i].assign(n, 0.0f);
    s.v[i].assign(n, 0.0f);
    if (!s.params[i].compressed) continue;
    s.state_of[i] = s.compressed.size();
    s.compressed.push_back(i);
    s.states.emplace_back(n, p);
    numels.push_back(n);
    if (o.precondition) s.preconditioned.emplace_back(n, 0.0f);
  }
  for (std::size_t c = 0; c < s.compressed.size(); ++c) {
    s.state_ptrs.push_back(&s.states[c]);
    std::vector<float>& buffer = o.precondition ? s.preconditioned[c] : s.m[s.compressed[c]];
    s.exchanged.push_back(TensorView::of(std::span<float>(buffer)));
  }
  s.workspace.resize(onebit_workspace_bytes(numels, p));
}

OneBitAdam::~OneBitAdam() = default;

void OneBitAdam::set_lr(float lr) {
  GRADCOMM_CHECK_ARG(finite_nonneg(lr), "OneBitAdam::set_lr: lr ", lr, " must be finite and >= 0");
  options_.lr = lr;
}

std::size_t OneBitAdam::num_params() const noexcept { return impl_->params.size(); }

std::span<const float> OneBitAdam::momentum(std::size_t param) const {
  GRADCOMM_CHECK_ARG(param < impl_->m.size(), "OneBitAdam::momentum: param ", param, " of ",
                     impl_->m.size());
  return impl_->m[param];
}

std::span<const float> OneBitAdam::variance(std::size_t param) const {
  GRADCOMM_CHECK_ARG(param < impl_->v.size(), "OneBitAdam::variance: param ", param, " of ",
                     impl_->v.size());
  return impl_->v[param];
}

const OneBitErrorState& OneBitAdam::error_state(std::size_t param) const {
  GRADCOMM_CHECK_ARG(param < impl_->state_of.size() &&
                         impl_->state_of[param] != std::numeric_limits<std::size_t>::max(),
                     "OneBitAdam::error_state: param ", param, " is not a compressed parameter");
  return impl_->states[impl_->state_of[param]];
}

void OneBitAdam::step(std::span<const TensorView> grads) {
  Impl& s = *impl_;
  const std::size_t count = s.params.size();
  GRADCOMM_CHECK(grads.size() == count, ErrorCode::kSizeMismatch, "OneBitAdam::step on rank ",
                 comm_.rank(), ": ", grads.size(), " gradients for ", count, " parameters");
  for (std::size_t i = 0; i < count; ++i) {
    GRADCOMM_CHECK(grads[i].numel() == s.params[i].value.numel() && grads[i].dtype() == DType::kFloat32 &&
                       grads[i].device() == Device::kCpu,
                   ErrorCode::kSizeMismatch, "OneBitAdam::step on rank ", comm_.rank(), ": gradient ",
                   i, " ('", s.params[i].name, "') is ", grads[i].describe(), "; expected float32[",
                   s.params[i].value.numel(), "] on cpu");
  }
  const OneBitAdamOptions& o = options_;
  const bool compress = frozen();
  const std::int64_t t = step_ + 1;
  const float one_minus_b1 = 1.0f - o.beta1;
  const float one_minus_b2 = 1.0f - o.beta2;
  // Bias corrections; the variance's stops with the freeze (it is frozen too).
  const double t_v = static_cast<double>(compress ? o.freeze_step : t);
  const float bc1 = o.bias_correction ? static_cast<float>(1.0 - std::pow(double(o.beta1), double(t))) : 1.0f;
  const float bc2_frozen = o.bias_correction ? static_cast<float>(1.0 - std::pow(double(o.beta2), t_v)) : 1.0f;
  const float bc2_live = o.bias_correction ? static_cast<float>(1.0 - std::pow(double(o.beta2), double(t))) : 1.0f;
  const float sqrt_bc2_frozen = std::sqrt(bc2_frozen);
  const float sqrt_bc2_live = std::sqrt(bc2_live);
  const float inv_p = 1.0f / static_cast<float>(comm_.size());

  // Dense part: every gradient in the warm-up, only the uncompressed groups afterwards.
  const std::size_t dense_numel = compress ? s.uncompressed_numel : s.dense.size();
  for (std::size_t i = 0; i < count; ++i) {
    if ((!compress || !s.params[i].compressed) && grads[i].numel() > 0) {
      std::memcpy(s.dense.data() + s.dense_offset[i], grads[i].data(), grads[i].nbytes());
    }
  }
  if (dense_numel > 0) {
    comm_.allreduce_inplace(TensorView(s.dense.data(), dense_numel, DType::kFloat32), ReduceOp::kSum);
  }

  // Plain Adam on the averaged gradient: `update = m / (sqrt(v) + eps) (+ wd * p)`,
  // `p += -lr * update`, in the reference's order of fp32 operations.
  auto apply = [&](std::size_t i, float sqrt_bc2, bool update_v, const float* g) {
    float* m = s.m[i].data();
    float* v = s.v[i].data();
    float* w = static_cast<float*>(s.params[i].value.data());
    const std::size_t n = s.m[i].size();
    for (std::size_t k = 0; k < n; ++k) {
      if (g) {
        const float gk = g[k] * inv_p;
        m[k] = m[k] * o.beta1 + one_minus_b1 * gk;
        if (update_v) v[k] = v[k] * o.beta2 + one_minus_b2 * gk * gk;
      }
      float update = (m[k] / bc1) / (std::sqrt(v[k]) / sqrt_bc2 + o.eps);
      if (o.weight_decay > 0.0f) update += o.weight_decay * w[k];
      w[k] += -o.lr * update;
    }
  };

  if (!compress) {
    for (std::size_t i = 0; i < count; ++i) apply(i, sqrt_bc2_live, true, s.dense.data() + s.dense_offset[i]);
    step_ = t;
    last_nonfinite_ = 0;
    return;
  }

  for (std::size_t i = 0; i < count; ++i) {
    if (!s.params[i].compressed) apply(i, sqrt_bc2_live, true, s.dense.data() + s.dense_offset[i]);
  }
  // Compressed params: local momentum, then one fused 1-bit allreduce of all of them.
  for (std::size_t c = 0; c < s.compressed.size(); ++c) {
    const std::size_t i = s.compressed[c];
    float* m = s.m[i].data();
    const float* g = static_cast<const float*>(grads[i].data());
    const std::size_t n = s.m[i].size();
    for (std::size_t k = 0; k < n; ++k) m[k] = m[k] * o.beta1 + one_minus_b1 * g[k];
    if (o.precondition) {
      const float* v = s.v[i].data();
      float* u = s.preconditioned[c].data();
      for (std::size_t k = 0; k < n; ++k) u[k] = m[k] / (std::sqrt(v[k]) / sqrt_bc2_frozen + o.eps);
    }
  }
  if (!s.compressed.empty()) {
    last_nonfinite_ =
        compressed_allreduce(comm_, s.exchanged, s.state_ptrs, s.exchanged,
                             TensorView(s.workspace.data(), s.workspace.size(), DType::kUInt8))
            .nonfinite;
  }
  for (std::size_t c = 0; c < s.compressed.size(); ++c) {
    const std::size_t i = s.compressed[c];
    const std::vector<float>& mask = s.params[i].mask;
    float* m = s.m[i].data();
    const std::size_t n = s.m[i].size();
    if (!o.precondition) {
      if (!mask.empty()) {
        for (std::size_t k = 0; k < n; ++k) m[k] *= mask[k];
      }
      apply(i, sqrt_bc2_frozen, false, nullptr);
      continue;
    }
    // The exchanged value is the update itself; m is kept consistent with it.
    float* u = s.preconditioned[c].data();
    const float* v = s.v[i].data();
    float* w = static_cast<float*>(s.params[i].value.data());
    for (std::size_t k = 0; k < n; ++k) {
      if (!mask.empty()) u[k] *= mask[k];
      m[k] = u[k] * (std::sqrt(v[k]) / sqrt_bc2_frozen + o.eps);
      float update = u[k] / bc1;
      if (o.weight_decay > 0.0f) update += o.weight_decay * w[k];
      w[k] += -o.lr * update;
    }
  }
  step_ = t;
}

std::vector<std::byte> OneBitAdam::save_state() const {
  const Impl& s = *impl_;
  std::vector<std::byte> blob;
  detail::StateBlobWriter w(blob);
  w.value(kAdamMagic);
  w.value(kAdamVersion);
  w.value(static_cast<std::int32_t>(comm_.size()));
  w.value(static_cast<std::int32_t>(comm_.rank()));
  w.value(step_);
  w.value(static_cast<std::uint64_t>(s.params.size()));
  for (std::size_t i = 0; i < s.params.size(); ++i) {
    w.value(static_cast<std::uint64_t>(s.m[i].size()));
    w.value(static_cast<std::uint8_t>(s.params[i].compressed));
    w.bytes(s.m[i].data(), s.m[i].size() * sizeof(float));
    w.bytes(s.v[i].data(), s.v[i].size() * sizeof(float));
  }
  for (const OneBitErrorState& state : s.states) {
    const std::vector<std::byte> e = state.save();
    w.value(static_cast<std::uint64_t>(e.size()));
    w.bytes(e.data(), e.size());
  }
  return blob;
}

void OneBitAdam::load_state(std::span<const std::byte> blob) {
  Impl& s = *impl_;
  detail::StateBlobReader r(blob, detail::concat("OneBitAdam::load_state on rank ", comm_.rank()));
  GRADCOMM_CHECK(r.value<std::uint32_t>("magic") == kAdamMagic &&
                     r.value<std::uint32_t>("version") == kAdamVersion,
                 ErrorCode::kCorruptPayload, "OneBitAdam::load_state on rank ", comm_.rank(),
                 ": not a OneBitAdam state (bad magic or version)");
  const auto size = r.value<std::int32_t>("world size");
  const auto rank = r.value<std::int32_t>("rank");
  GRADCOMM_CHECK(size == comm_.size() && rank == comm_.rank(), ErrorCode::kCorruptPayload,
                 "OneBitAdam::load_state on rank ", comm_.rank(), " of ", comm_.size(),
                 ": the blob was saved by rank ", rank, " of ", size,
                 " (error feedback is per rank: each rank loads its own state)");
  const auto step = r.value<std::int64_t>("step");
  GRADCOMM_CHECK(step >= 0, ErrorCode::kCorruptPayload, "OneBitAdam::load_state: step ", step);
  const auto count = r.value<std::uint64_t>("parameter count");
  GRADCOMM_CHECK(count == s.params.size(), ErrorCode::kCorruptPayload, "OneBitAdam::load_state on rank ",
                 comm_.rank(), ": blob has ", count, " parameters, optimizer has ", s.params.size());
  // Read into fresh buffers first, so a blob that fails half-way leaves the state as it was.
  std::vector<std::vector<float>> m(count), v(count);
  for (std::size_t i = 0; i < count; ++i) {
    const auto n = r.value<std::uint64_t>("parameter length");
    const auto compressed = r.value<std::uint8_t>("parameter kind");
    GRADCOMM_CHECK(n == s.m[i].size() && compressed == static_cast<std::uint8_t>(s.params[i].compressed),
                   ErrorCode::kCorruptPayload, "OneBitAdam::load_state on rank ", comm_.rank(),
                   ": parameter ", i, " ('", s.params[i].name, "') has ", s.m[i].size(),
                   " elements (compressed=", s.params[i].compressed, "), the blob ", n,
                   " (compressed=", int(compressed), ")");
    m[i].resize(n);
    v[i].resize(n);
    r.bytes(m[i].data(), n * sizeof(float), "momentum");
    r.bytes(v[i].data(), n * sizeof(float), "variance");
  }
  std::vector<OneBitErrorState> states;
  for (const OneBitErrorState& existing : s.states) {
    const auto bytes = r.value<std::uint64_t>("error state size");
    const std::span<const std::byte> error_blob = r.view(bytes, "an error state");
    states.emplace_back(existing.numel(), existing.world_size());
    states.back().load(error_blob);
  }
  r.finish();
  s.m = std::move(m);
  s.v = std::move(v);
  for (std::size_t c = 0; c < s.states.size(); ++c) std::swap(s.states[c], states[c]);
  if (!options_.precondition) {
    for (std::size_t c = 0; c < s.compressed.size(); ++c) {
      s.exchanged[c] = TensorView::of(std::span<float>(s.m[s.compressed[c]]));
    }
  }
  step_ = step;
}

}  // namespace gradcomm
