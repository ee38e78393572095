// OneBitAdam (docs/algorithms/onebit-adam.md): dense Adam for freeze_step steps, then frozen
// variance and 1-bit compressed momentum exchange.
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "core/state_blob.h"
#include "gradcomm/agreement.h"
#include "gradcomm/dense.h"
#include "gradcomm/exchanger.h"
#include "gradcomm/layer.h"
#include "gradcomm/onebit.h"
#include "kernels/cpu/convert_kernels.h"

namespace gradcomm {
namespace {

constexpr std::uint32_t kAdamMagic = 0x41314347u;  // "GC1A"
// 2: each parameter's float32 master copy follows its m and v (16-bit parameters). 1 (no
// masters: float32 parameters only) still loads.
constexpr std::uint32_t kAdamVersion = 2;

bool finite_nonneg(float x) { return std::isfinite(x) && x >= 0.0f; }

}  // namespace

struct OneBitAdam::Impl {
  std::vector<OneBitParam> params;
  std::vector<std::vector<float>> m, v;
  // By param, for 16-bit parameters only (empty for float32 ones): the float32 master
  // copy the update is applied to (the parameter gets it rounded once per step, so steps
  // smaller than the 16-bit spacing still add up).
  std::vector<std::vector<float>> master;
  // One 16-bit gradient widened to float32, as large as the largest 16-bit parameter:
  // each is read by its own parameter's update before the next is widened.
  std::vector<float> wide;
  // The dense exchanges: every parameter's gradient in the warm-up, the uncompressed ones'
  // after the freeze. The same StepEngine and wire format as every Exchanger, so a DDP
  // hook driving gradcomm's Exchanger over the same layers averages bitwise alike.
  std::unique_ptr<Exchanger> warmup, uncompressed;
  std::vector<std::vector<std::byte>> averaged;  // by param: the dense exchange's output (its dtype)
  std::vector<TensorView> averaged_views, uncompressed_in, uncompressed_out;
  // Compressed params, in registration order: their error states and the fused call.
  std::vector<std::size_t> compressed;  // index -> param
  std::vector<OneBitErrorState> states;
  std::vector<OneBitErrorState*> state_ptrs;
  std::vector<TensorView> exchanged;     // m, or the preconditioned copy below
  std::vector<std::vector<float>> preconditioned;  // by compressed index (precondition only)
  std::vector<std::size_t> state_of;     // param -> compressed index, or npos
  std::vector<std::byte> workspace;
  std::vector<TensorView> exchanged_scratch;  // step(): the compressed params' gradients
  // The step whose momenta exchange_momentum() averaged (-1: none yet).
  std::int64_t exchanged_step = -1;

  // The float32 values the update applies to: the master copy, or the parameter itself.
  float* weights(std::size_t i) {
    return master[i].empty() ? static_cast<float*>(params[i].value.data()) : master[i].data();
  }
  // A gradient (in its parameter's dtype) as float32, valid until the next call.
  const float* widened(const TensorView& grad) {
    if (grad.dtype() == DType::kFloat32) return static_cast<const float*>(grad.data());
    kernels::widen_to_f32(static_cast<const std::uint16_t*>(grad.data()), grad.dtype(), wide.data(), grad.numel());
    return wide.data();
  }
  // After an update: the parameter from its master copy, rounded to nearest even.
  void publish(std::size_t i) {
    if (master[i].empty()) return;
    kernels::narrow_from_f32(master[i].data(), params[i].value.dtype(),
                             static_cast<std::uint16_t*>(params[i].value.data()), master[i].size());
  }
};

namespace {

std::vector<LayerSpec> layers_of(const std::vector<OneBitParam>& params, bool only_uncompressed) {
  std::vector<LayerSpec> layers;
  for (const OneBitParam& param : params) {
    if (only_uncompressed && param.compressed) continue;
    layers.push_back({param.name, param.value.numel(), 1, !param.compressed, param.value.dtype()});
  }
  return layers;
}

}  // namespace

void check_options(const OneBitAdamOptions& o) {
  GRADCOMM_CHECK_ARG(finite_nonneg(o.lr), "OneBitAdam: lr ", o.lr, " must be finite and >= 0");
  GRADCOMM_CHECK_ARG(o.beta1 >= 0.0f && o.beta1 < 1.0f, "OneBitAdam: beta1 ", o.beta1,
                     " must be in [0, 1)");
  GRADCOMM_CHECK_ARG(o.beta2 >= 0.0f && o.beta2 < 1.0f, "OneBitAdam: beta2 ", o.beta2,
                     " must be in [0, 1)");
  GRADCOMM_CHECK_ARG(std::isfinite(o.eps) && o.eps > 0.0f, "OneBitAdam: eps ", o.eps,
                     " must be finite and > 0");
  GRADCOMM_CHECK_ARG(finite_nonneg(o.weight_decay), "OneBitAdam: weight_decay ", o.weight_decay,
                     " must be finite and >= 0");
  GRADCOMM_CHECK_ARG(o.freeze_step >= 1, "OneBitAdam: freeze_step ", o.freeze_step,
                     " must be >= 1 (the variance must see at least one averaged gradient before "
                     "it is frozen; a zero variance makes every compressed update explode)");
  GRADCOMM_CHECK_ARG(o.bucket_bytes > 0, "OneBitAdam: bucket_bytes must be positive");
}

OneBitAdam::OneBitAdam(Communicator& comm, std::vector<OneBitParam> params, OneBitAdamOptions options)
    : comm_(comm), options_(options), impl_(std::make_unique<Impl>()) {
  const OneBitAdamOptions& o = options_;
  check_options(o);
  GRADCOMM_CHECK_ARG(comm.device() == Device::kCpu, "OneBitAdam: ", comm.describe(),
                     " takes device buffers; OneBitAdam updates host parameters");

  Impl& s = *impl_;
  s.params = std::move(params);
  const std::size_t count = s.params.size();
  const int p = comm.size();
  for (std::size_t i = 0; i < count; ++i) {
    const OneBitParam& param = s.params[i];
    GRADCOMM_CHECK_ARG(is_gradient_dtype(param.value.dtype()) && param.value.device() == Device::kCpu,
                       "OneBitAdam: parameter ", i, " ('", param.name, "') is ", param.value.describe(),
                       "; expected float32, float16 or bfloat16 on cpu");
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
  }
  check_agreement(comm, layers_of(s.params, false),
                  detail::concat("onebit-adam lr=", o.lr, " beta1=", o.beta1, " beta2=", o.beta2,
                                 " eps=", o.eps, " weight_decay=", o.weight_decay,
                                 " freeze_step=", o.freeze_step, " bias_correction=",
                                 o.bias_correction, " precondition=", o.precondition,
                                 " bucket_bytes=", o.bucket_bytes),
                  "OneBitAdam setup");
  const ExchangerOptions dense_options{.bucket_bytes = o.bucket_bytes};
  s.warmup = std::make_unique<Exchanger>(comm, std::make_shared<DenseCompressor>(),
                                         layers_of(s.params, false), dense_options);

  s.m.resize(count);
  s.v.resize(count);
  s.master.resize(count);
  s.averaged.resize(count);
  s.state_of.assign(count, std::numeric_limits<std::size_t>::max());
  std::vector<std::size_t> numels;
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t n = s.params[i].value.numel();
    s.m[i].assign(n, 0.0f);
    s.v[i].assign(n, 0.0f);
    const DType dtype = s.params[i].value.dtype();
    if (dtype != DType::kFloat32) {
      s.master[i].resize(n);
      kernels::widen_to_f32(static_cast<const std::uint16_t*>(s.params[i].value.data()), dtype,
                            s.master[i].data(), n);
      if (s.wide.size() < n) s.wide.resize(n);
    }
    s.averaged[i].assign(n * dtype_size(dtype), std::byte{0});
    s.averaged_views.emplace_back(s.averaged[i].data(), n, dtype);
    if (!s.params[i].compressed) continue;
    s.state_of[i] = s.compressed.size();
    s.compressed.push_back(i);
    s.states.emplace_back(n, p);
    numels.push_back(n);
    if (o.precondition) s.preconditioned.emplace_back(n, 0.0f);
  }
  if (s.compressed.size() < count) {
    s.uncompressed = std::make_unique<Exchanger>(comm, std::make_shared<DenseCompressor>(),
                                                 layers_of(s.params, true), dense_options);
  }
  for (std::size_t c = 0; c < s.compressed.size(); ++c) {
    s.state_ptrs.push_back(&s.states[c]);
    std::vector<float>& buffer = o.precondition ? s.preconditioned[c] : s.m[s.compressed[c]];
    s.exchanged.push_back(TensorView::of(std::span<float>(buffer)));
  }
  s.workspace.resize(onebit_workspace_bytes(numels, p));
  s.uncompressed_in.reserve(count);
  s.uncompressed_out.reserve(count);
  s.exchanged_scratch.reserve(count);
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

void OneBitAdam::check_gradients(const char* call, std::span<const TensorView> grads,
                                 bool compressed_only) const {
  const Impl& s = *impl_;
  const std::size_t expected = compressed_only ? s.compressed.size() : s.params.size();
  GRADCOMM_CHECK(grads.size() == expected, ErrorCode::kSizeMismatch, "OneBitAdam::", call, " on rank ",
                 comm_.rank(), ": ", grads.size(), " gradients for ", expected,
                 compressed_only ? " compressed parameters" : " parameters");
  for (std::size_t j = 0; j < expected; ++j) {
    const std::size_t i = compressed_only ? s.compressed[j] : j;
    const TensorView& value = s.params[i].value;
    GRADCOMM_CHECK(grads[j].numel() == value.numel() && grads[j].dtype() == value.dtype() &&
                       grads[j].device() == Device::kCpu,
                   ErrorCode::kSizeMismatch, "OneBitAdam::", call, " on rank ", comm_.rank(), ": gradient ", j,
                   " ('", s.params[i].name, "') is ", grads[j].describe(), "; expected ", dtype_name(value.dtype()),
                   "[", value.numel(), "] on cpu (the parameter's dtype)");
  }
}

// Bias corrections of step t: m's (1 - b1^t), and v's: sqrt(1 - b2^t) for a variance
// still updated (warm-up, uncompressed params), with t stopped at the freeze for a frozen
// one. All 1 without bias correction.
OneBitAdam::Corrections OneBitAdam::corrections() const {
  const OneBitAdamOptions& o = options_;
  const std::int64_t t = step_ + 1;
  Corrections c;
  if (!o.bias_correction) return c;
  const double t_v = static_cast<double>(frozen() ? o.freeze_step : t);
  c.m = static_cast<float>(1.0 - std::pow(double(o.beta1), double(t)));
  c.sqrt_v_frozen = std::sqrt(static_cast<float>(1.0 - std::pow(double(o.beta2), t_v)));
  c.sqrt_v_live = std::sqrt(static_cast<float>(1.0 - std::pow(double(o.beta2), double(t))));
  return c;
}

// Plain Adam on an averaged gradient (or, with g null, on the exchanged m): m and v
// updated, then `p += -lr * (m / (sqrt(v) + eps) + wd * p)`, in the reference's order of
// fp32 operations.
void OneBitAdam::adam_update(std::size_t i, const float* g, bool update_v, float sqrt_bc2) {
  Impl& s = *impl_;
  const OneBitAdamOptions& o = options_;
  const float bc1 = corrections().m;
  float* m = s.m[i].data();
  float* v = s.v[i].data();
  float* w = s.weights(i);
  const std::size_t n = s.m[i].size();
  // The options copied to locals: read through `o` inside the loop, a float that a store to
  // m, v or w might alias is reloaded every element and the loop is not vectorised.
  const float beta1 = o.beta1, beta2 = o.beta2, eps = o.eps, weight_decay = o.weight_decay, lr = o.lr;
  for (std::size_t k = 0; k < n; ++k) {
    if (g) {
      const float gk = g[k];
      m[k] = m[k] * beta1 + (1.0f - beta1) * gk;
      if (update_v) v[k] = v[k] * beta2 + (1.0f - beta2) * gk * gk;
    }
    float update = (m[k] / bc1) / (std::sqrt(v[k]) / sqrt_bc2 + eps);
    if (weight_decay > 0.0f) update += weight_decay * w[k];
    w[k] += -lr * update;
  }
  s.publish(i);
}

void OneBitAdam::warmup_update(std::span<const TensorView> averaged) {
  GRADCOMM_CHECK(!frozen(), ErrorCode::kInvalidArgument, "OneBitAdam::warmup_update on rank ",
                 comm_.rank(), ": step ", step_, " is past freeze_step=", options_.freeze_step,
                 " (use exchange_momentum and frozen_update)");
  check_gradients("warmup_update", averaged, false);
  const float sqrt_bc2 = corrections().sqrt_v_live;
  for (std::size_t i = 0; i < averaged.size(); ++i) {
    adam_update(i, impl_->widened(averaged[i]), true, sqrt_bc2);
  }
  step_ += 1;
  last_nonfinite_ = 0;
}

OneBitResult OneBitAdam::exchange_momentum(std::span<const TensorView> local_grads,
                                           std::span<const TensorView> momenta_out) {
  Impl& s = *impl_;
  const OneBitAdamOptions& o = options_;
  GRADCOMM_CHECK(frozen(), ErrorCode::kInvalidArgument, "OneBitAdam::exchange_momentum on rank ",
                 comm_.rank(), ": step ", step_, " is before freeze_step=", o.freeze_step,
                 " (warm-up steps average the gradients densely)");
  GRADCOMM_CHECK(s.exchanged_step != step_, ErrorCode::kInvalidArgument,
                 "OneBitAdam::exchange_momentum on rank ", comm_.rank(), ": step ", step_,
                 " was exchanged already; call frozen_update() first");
  check_gradients("exchange_momentum", local_grads, true);
  GRADCOMM_CHECK(momenta_out.empty() || momenta_out.size() == s.compressed.size(), ErrorCode::kSizeMismatch,
                 "OneBitAdam::exchange_momentum: ", momenta_out.size(), " outputs for ",
                 s.compressed.size(), " compressed parameters");
  const float sqrt_bc2 = corrections().sqrt_v_frozen;
  const float beta1 = o.beta1, eps = o.eps;  // locals, so the loops vectorise (adam_update)
  // Local momentum, then one fused 1-bit allreduce of all of them.
  for (std::size_t c = 0; c < s.compressed.size(); ++c) {
    const std::size_t i = s.compressed[c];
    float* m = s.m[i].data();
    const float* g = s.widened(local_grads[c]);
    const std::size_t n = s.m[i].size();
    for (std::size_t k = 0; k < n; ++k) m[k] = m[k] * beta1 + (1.0f - beta1) * g[k];
    if (o.precondition) {
      const float* v = s.v[i].data();
      float* u = s.preconditioned[c].data();
      for (std::size_t k = 0; k < n; ++k) u[k] = m[k] / (std::sqrt(v[k]) / sqrt_bc2 + eps);
    }
  }
  OneBitResult result;
  if (!s.compressed.empty()) {
    result = compressed_allreduce(comm_, s.exchanged, s.state_ptrs, s.exchanged,
                                  TensorView(s.workspace.data(), s.workspace.size(), DType::kUInt8));
  }
  last_nonfinite_ = result.nonfinite;
  // m from the exchange: the mask, and with precondition m = u * (sqrt(v) + eps), so the
  // exchanged value stays the update itself and m stays consistent with it.
  for (std::size_t c = 0; c < s.compressed.size(); ++c) {
    const std::size_t i = s.compressed[c];
    const std::vector<float>& mask = s.params[i].mask;
    float* m = s.m[i].data();
    const std::size_t n = s.m[i].size();
    if (o.precondition) {
      float* u = s.preconditioned[c].data();
      const float* v = s.v[i].data();
      if (!mask.empty()) {
        for (std::size_t k = 0; k < n; ++k) u[k] *= mask[k];
      }
      for (std::size_t k = 0; k < n; ++k) m[k] = u[k] * (std::sqrt(v[k]) / sqrt_bc2 + eps);
    } else if (!mask.empty()) {
      for (std::size_t k = 0; k < n; ++k) m[k] *= mask[k];
    }
    if (!momenta_out.empty()) {
      const DType dtype = s.params[i].value.dtype();
      GRADCOMM_CHECK(momenta_out[c].numel() == n && momenta_out[c].dtype() == dtype &&
                         momenta_out[c].device() == Device::kCpu,
                     ErrorCode::kSizeMismatch, "OneBitAdam::exchange_momentum: output ", c, " is ",
                     momenta_out[c].describe(), "; expected ", dtype_name(dtype), "[", n, "] on cpu");
      if (dtype == DType::kFloat32) {
        std::copy(m, m + n, static_cast<float*>(momenta_out[c].data()));
      } else {
        kernels::narrow_from_f32(m, dtype, static_cast<std::uint16_t*>(momenta_out[c].data()), n);
      }
    }
  }
  s.exchanged_step = step_;
  return result;
}

void OneBitAdam::frozen_update(std::span<const TensorView> uncompressed_averaged) {
  Impl& s = *impl_;
  const OneBitAdamOptions& o = options_;
  GRADCOMM_CHECK(frozen() && s.exchanged_step == step_, ErrorCode::kInvalidArgument,
                 "OneBitAdam::frozen_update on rank ", comm_.rank(), ": step ", step_,
                 (frozen() ? " has no exchanged momentum: call exchange_momentum() first (in a DDP "
                             "hook: register the optimizer as the hook's state)"
                           : " is before the freeze"));
  const std::size_t uncompressed = s.params.size() - s.compressed.size();
  GRADCOMM_CHECK(uncompressed_averaged.size() == uncompressed, ErrorCode::kSizeMismatch,
                 "OneBitAdam::frozen_update on rank ", comm_.rank(), ": ", uncompressed_averaged.size(),
                 " averaged gradients for ", uncompressed, " uncompressed parameters");
  const Corrections bc = corrections();
  std::size_t next_uncompressed = 0;
  for (std::size_t i = 0; i < s.params.size(); ++i) {
    if (!s.params[i].compressed) {
      const TensorView& g = uncompressed_averaged[next_uncompressed++];
      GRADCOMM_CHECK(g.numel() == s.params[i].value.numel() && g.dtype() == s.params[i].value.dtype(),
                     ErrorCode::kSizeMismatch, "OneBitAdam::frozen_update: gradient of '",
                     s.params[i].name, "' is ", g.describe(), "; expected the parameter's ",
                     s.params[i].value.describe());
      adam_update(i, s.widened(g), true, bc.sqrt_v_live);
      continue;
    }
    if (!o.precondition) {
      adam_update(i, nullptr, false, bc.sqrt_v_frozen);
      continue;
    }
    // The exchanged value is the update itself.
    const float* u = s.preconditioned[s.state_of[i]].data();
    float* w = s.weights(i);
    const std::size_t n = s.m[i].size();
    const float bc1 = bc.m, weight_decay = o.weight_decay, lr = o.lr;  // locals: adam_update says why
    for (std::size_t k = 0; k < n; ++k) {
      float update = u[k] / bc1;
      if (weight_decay > 0.0f) update += weight_decay * w[k];
      w[k] += -lr * update;
    }
    s.publish(i);
  }
  step_ += 1;
}

void OneBitAdam::step(std::span<const TensorView> grads) {
  Impl& s = *impl_;
  check_gradients("step", grads, false);
  if (!frozen()) {
    s.warmup->exchange(grads, s.averaged_views);
    warmup_update(s.averaged_views);
    return;
  }
  s.uncompressed_in.clear();
  s.uncompressed_out.clear();
  std::vector<TensorView>& local = s.exchanged_scratch;
  local.clear();
  for (std::size_t i = 0; i < s.params.size(); ++i) {
    if (s.params[i].compressed) {
      local.push_back(grads[i]);
    } else {
      s.uncompressed_in.push_back(grads[i]);
      s.uncompressed_out.push_back(s.averaged_views[i]);
    }
  }
  if (s.uncompressed) s.uncompressed->exchange(s.uncompressed_in, s.uncompressed_out);
  exchange_momentum(local, {});
  frozen_update(s.uncompressed_out);
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
    w.value(static_cast<std::uint8_t>(!s.master[i].empty()));
    w.bytes(s.master[i].data(), s.master[i].size() * sizeof(float));
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
  GRADCOMM_CHECK(r.value<std::uint32_t>("magic") == kAdamMagic, ErrorCode::kCorruptPayload,
                 "OneBitAdam::load_state on rank ", comm_.rank(), ": not a OneBitAdam state (bad magic)");
  const auto version = r.value<std::uint32_t>("version");
  GRADCOMM_CHECK(version == 1 || version == kAdamVersion, ErrorCode::kCorruptPayload,
                 "OneBitAdam::load_state on rank ", comm_.rank(), ": state version ", version,
                 "; this gradcomm reads 1 and ", kAdamVersion);
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
  std::vector<std::vector<float>> m(count), v(count), master(count);
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
    // Version 1 was written by float32 parameters only: no master copies.
    const bool has_master = version >= 2 && r.value<std::uint8_t>("master flag") != 0;
    GRADCOMM_CHECK(has_master == !s.master[i].empty(), ErrorCode::kCorruptPayload, "OneBitAdam::load_state on rank ",
                   comm_.rank(), ": parameter ", i, " ('", s.params[i].name, "') is ",
                   dtype_name(s.params[i].value.dtype()), " but the blob was saved from ",
                   has_master ? "a 16-bit" : "a float32", " parameter");
    if (has_master) {
      master[i].resize(n);
      r.bytes(master[i].data(), n * sizeof(float), "master copy");
    }
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
  for (std::size_t i = 0; i < count; ++i) {
    if (s.master[i].empty()) continue;
    s.master[i] = std::move(master[i]);
    s.publish(i);  // the parameter as the saved run had it
  }
  for (std::size_t c = 0; c < s.states.size(); ++c) std::swap(s.states[c], states[c]);
  if (!options_.precondition) {
    for (std::size_t c = 0; c < s.compressed.size(); ++c) {
      s.exchanged[c] = TensorView::of(std::span<float>(s.m[s.compressed[c]]));
    }
  }
  step_ = step;
}

}  // namespace gradcomm
