#include "gradcomm/step_engine.h"

#include <algorithm>
#include <cstring>
#include <sstream>
#include <string>
#include <tuple>

#include "gradcomm/agreement.h"
#include "gradcomm/communicator.h"
#include "core/float16.h"
#include "exchange/step_engine_impl.h"
#if defined(GRADCOMM_HAVE_CUDA)
#include "kernels/cuda/engine_kernels.cuh"
#endif

namespace gradcomm {

using detail::align_up;
using detail::kAlign;

const char* nonfinite_policy_name(NonFinitePolicy policy) noexcept {
  switch (policy) {
    case NonFinitePolicy::kError: return "error";
    case NonFinitePolicy::kSkipStep: return "skip_step";
    case NonFinitePolicy::kZero: return "zero";
  }
  return "unknown";
}

NonFinitePolicy parse_nonfinite_policy(const std::string& name) {
  if (name == "error") return NonFinitePolicy::kError;
  if (name == "skip_step") return NonFinitePolicy::kSkipStep;
  if (name == "zero") return NonFinitePolicy::kZero;
  GRADCOMM_THROW(ErrorCode::kInvalidArgument, "unknown non-finite policy '", name,
                 "' (expected error, skip_step or zero)");
}

namespace {

// Where the layers live: every layer on the CPU, or every layer on one CUDA device.
std::pair<Device, int> placement_of(std::span<const LayerSpec> layers) {
  if (layers.empty()) return {Device::kCpu, 0};
  const LayerSpec& first = layers.front();
  for (const LayerSpec& l : layers) {
    GRADCOMM_CHECK_ARG(l.device == first.device && l.device_index == first.device_index,
                       "StepEngine: layer '", l.name, "' is on ", device_name(l.device), ":",
                       l.device_index, " but layer '", first.name, "' on ", device_name(first.device),
                       ":", first.device_index, "; one engine exchanges layers of one device");
  }
  return {first.device, first.device_index};
}

}  // namespace

StepEngine::StepEngine(std::shared_ptr<Compressor> compressor, std::vector<LayerSpec> layers,
                       int world_size, int rank, StepEngineOptions options)
    : compressor_(std::move(compressor)), layers_(std::move(layers)), world_size_(world_size),
      rank_(rank), options_(options), impl_(std::make_unique<Impl>()) {
  GRADCOMM_CHECK_ARG(compressor_ != nullptr, "StepEngine: no compressor given");
  GRADCOMM_CHECK_ARG(world_size_ >= 1 && rank_ >= 0 && rank_ < world_size_, "StepEngine: rank ",
                     rank_, " of world size ", world_size_);
  GRADCOMM_CHECK_ARG(options_.bucket_bytes > 0, "StepEngine: bucket_bytes must be positive");
  GRADCOMM_CHECK_ARG(options_.region_refresh_steps >= 0, "StepEngine: region_refresh_steps must be >= 0, got ",
                     options_.region_refresh_steps);
  Impl& s = *impl_;
  std::tie(s.device, s.device_index) = placement_of(layers_);
  s.mover.device = s.device;
  std::size_t widest = 0;
  for (const LayerSpec& spec : layers_) {
    GRADCOMM_CHECK_ARG(is_gradient_dtype(spec.dtype),
                       "StepEngine: layer '", spec.name, "' has ", dtype_name(spec.dtype),
                       " gradients; gradcomm exchanges float32, float16 and bfloat16");
    if (spec.dtype != DType::kFloat32) widest = std::max(widest, spec.numel);
  }
  compressor_->setup(layers_, world_size_, rank_);
  const std::size_t n = layers_.size();
  // No layer is n: the first step finds its order changed (and uploads it on a device).
  s.order.assign(n, n);
  s.position.resize(n);
  s.wire.resize(n);
  s.group_of.resize(n);
  s.offset_in_block.resize(n);
  s.outs.resize(n);
  s.local_nonfinite.resize(n);
  s.submitted.resize(n);
  s.sum_out_of_place = options_.nonfinite == NonFinitePolicy::kSkipStep;
  s.groups.reserve(n);
  s.next_member.resize(n);
  s.open_groups.reserve(n);
  s.slots.reserve(4 * n);
  s.group_layers.reserve(n);
  s.sparse.reset(n, world_size_, rank_, options_.region_refresh_steps);
  // Buffers from the compressor's bounds. Each layer may open a group of its own, which
  // costs at most a header word per layer and the alignment of its group.
  const auto p = static_cast<std::size_t>(world_size_);
  std::size_t send_bound = 0;
  for (std::size_t layer = 0; layer < n; ++layer) {
    send_bound += align_up(compressor_->max_payload_bytes(layer)) + 3 * kAlign;
  }
  s.send_capacity = send_bound;
  s.recv_capacity = p * send_bound;
  // Status words per group: an element per layer, or every rank's header (at most 16 bytes
  // per layer and rank: a count word, and the header's padding and layer-count words).
  s.status_capacity = n * (4 + 16 * p) + 64;
  const int d = s.device_index;
  s.send = detail::StepBuffer(s.device, d, s.send_capacity);
  // The receive side (allgathers: p payloads) grows in begin_step to what steps use: sized
  // from the bounds it would be p times the largest step, at 16 ranks gigabytes for a
  // ResNet-50 whose layers are summed or go through the sparse allreduce.
  s.recv = detail::StepBuffer(s.device, d, 0);
  s.scratch = detail::StepBuffer(s.device, d, 0);
  s.wide_grad = detail::StepBuffer(s.device, d, widest * sizeof(float));
  s.wide_out = detail::StepBuffer(s.device, d, widest * sizeof(float));
  s.layer_count = n;
  if (s.on_device()) {
    s.device_words = detail::StepBuffer(s.device, d, 12 * n);
    s.status_host = detail::HostStaging(s.device, s.status_capacity + 8 * n);
  }
}

StepEngine::~StepEngine() = default;

std::string StepEngine::settings_fingerprint() const {
  return compressor_->settings_fingerprint() + " bucket_bytes=" +
         std::to_string(options_.bucket_bytes) + " nonfinite=" +
         nonfinite_policy_name(options_.nonfinite) +
         " agree_every_step=" + (options_.agree_every_step ? "1" : "0") +
         " region_refresh_steps=" + std::to_string(options_.region_refresh_steps) +
         " exchange=" + exchange_choice_name(options_.exchange) + " hierarchy=" + hierarchy_name(options_.hierarchy);
}

bool StepEngine::in_step() const noexcept { return impl_->in_step; }
std::uint64_t StepEngine::layout_fingerprint() const noexcept { return impl_->layout_fingerprint; }
std::int64_t StepEngine::step() const noexcept { return impl_->step; }
std::size_t StepEngine::collectives_this_step() const noexcept { return impl_->slots.size(); }
Device StepEngine::device() const noexcept { return impl_->device; }
int StepEngine::device_index() const noexcept { return impl_->device_index; }
void* StepEngine::stream() const noexcept { return impl_->mover.stream; }

void StepEngine::set_stream(void* cuda_stream) {
  GRADCOMM_CHECK(!impl_->in_step, ErrorCode::kInvalidArgument, "StepEngine::set_stream on rank ",
                 rank_, " inside step ", impl_->step, ": change the stream between steps");
  impl_->mover.stream = cuda_stream;
}

void StepEngine::begin_step(std::int64_t step) {
  Impl& s = *impl_;
  const detail::DeviceScope device_scope(s.device, s.device_index);
  GRADCOMM_CHECK(!s.in_step, ErrorCode::kInvalidArgument, "StepEngine::begin_step(", step,
                 ") on rank ", rank_, ": step ", s.step, " was begun and not finished");
  GRADCOMM_CHECK_ARG(step >= 0, "StepEngine::begin_step: step ", step, " < 0");
  s.step = step;
  compressor_->set_step(step);
  if (s.on_device()) {
    s.mover.zero(s.nonfinite_counts(), 4 * s.layer_count);
    s.mover.fill_ones(s.corrupt_payloads(), 4 * s.layer_count);
    compressor_->set_execution(ExecutionContext{s.mover.stream, s.nonfinite_counts(), s.corrupt_payloads()});
  }
  const std::size_t n = layers_.size();
  const auto p = static_cast<std::size_t>(world_size_);
  s.groups.clear();
  s.open_groups.clear();
  for (std::size_t walked = 0; walked < n; ++walked) {
    const std::size_t layer = n - 1 - walked;  // backward order: the order gradients come in
    const LayerWire w = compressor_->wire(layer);
    GRADCOMM_CHECK(w.bytes() <= compressor_->max_payload_bytes(layer), ErrorCode::kInternal,
                   compressor_->name(), ": layer ", layer, " wants ", w.bytes(),
                   " payload bytes, over its declared maximum ",
                   compressor_->max_payload_bytes(layer));
    GRADCOMM_CHECK(w.collective == Collective::kAllgather
                       ? w.dtype == DType::kUInt8
                       : w.collective == Collective::kSparseAllreduce
                       ? detail::sparse_wire_ok(w, layers_[layer].numel)
                       : (w.collective == Collective::kAllreduce &&
                          (w.dtype == DType::kFloat32 || w.dtype == DType::kFloat16)),
                   ErrorCode::kInternal, compressor_->name(), ": layer ", layer,
                   " has an unsupported wire: ", collective_name(w.collective), " of ", w.count, " ",
                   dtype_name(w.dtype), " (", w.slots, " slots of ", dtype_name(w.value_dtype), ")");
    GRADCOMM_CHECK(w.collective != Collective::kSparseAllreduce || !s.on_device(), ErrorCode::kUnsupported,
                   "StepEngine on rank ", rank_, ": layer ", layer, " ('", layers_[layer].name,
                   "') would go through the sparse allreduce, which runs on host layers only; "
                   "exchange CUDA layers with ExchangeChoice::kCompressor, kDense or kAllgather");
    s.wire[layer] = w;
    s.submitted[layer] = 0;
    s.local_nonfinite[layer] = 0;
    s.outs[layer] = {};
    const std::size_t bytes = align_up(w.bytes());
    // The open group of this collective and dtype takes the layer while it fits; a full
    // one is closed (it keeps its place by its last layer) and the layer opens the next.
    const auto open = std::find_if(s.open_groups.begin(), s.open_groups.end(), [&](std::size_t gi) {
      return s.groups[gi].collective == w.collective && s.groups[gi].dtype == w.dtype;
    });
    const bool found = open != s.open_groups.end();
    if (found && s.groups[*open].block_bytes + bytes <= options_.bucket_bytes) {
      Impl::Group& g = s.groups[*open];
      s.next_member[g.tail] = layer;
      g.tail = layer;
      g.last_seen = walked;
      g.pending += 1;
      g.block_bytes += bytes;
    } else {
      Impl::Group g{};
      g.collective = w.collective;
      g.dtype = w.dtype;
      g.head = g.tail = layer;
      g.last_seen = walked;
      g.pending = 1;
      g.block_bytes = bytes;
      s.groups.push_back(g);
      if (found) {
        *open = s.groups.size() - 1;
      } else {
        s.open_groups.push_back(s.groups.size() - 1);
      }
    }
  }
  // Every rank computes the same order from the same wires (the layout fingerprint below
  // covers them): groups by their last layer, a group's layers in a row.
  std::sort(s.groups.begin(), s.groups.end(),
            [](const Impl::Group& a, const Impl::Group& b) { return a.last_seen < b.last_seen; });
  bool order_changed = false;
  std::size_t pos = 0;
  for (std::size_t gi = 0; gi < s.groups.size(); ++gi) {
    Impl::Group& g = s.groups[gi];
    g.first = pos;
    std::size_t offset = 0;
    for (std::size_t layer = g.head;; layer = s.next_member[layer]) {
      order_changed = order_changed || s.order[pos] != layer;
      s.order[pos] = layer;
      s.position[layer] = pos;
      s.group_of[layer] = gi;
      s.offset_in_block[layer] = offset;  // rebased below for allgather headers
      offset += align_up(s.wire[layer].bytes());
      pos += 1;
      if (layer == g.tail) break;
    }
    g.last = pos;
  }
  if (s.on_device() && order_changed) {
    // The framing kernels read the order on the device. The pinned copy is free again:
    // finish_step() waited for the stream that read it last.
    auto* staged = reinterpret_cast<std::uint32_t*>(s.status_host.at(s.status_capacity + 4 * n));
    for (std::size_t i = 0; i < n; ++i) staged[i] = static_cast<std::uint32_t>(s.order[i]);
    s.mover.copy(s.order_on_device(), staged, 4 * n);
  }
  // Place the groups; allgather blocks start with a header, so shift their payloads.
  std::size_t send_offset = 0, recv_offset = 0, status_offset = 0;
  for (Impl::Group& g : s.groups) {
    g.send_offset = send_offset;
    g.recv_offset = recv_offset;
    g.status_offset = status_offset;
    if (g.collective == Collective::kSparseAllreduce) {
      g.header_bytes = 0;  // the slot lists alone: counts and status travel in its phases
      send_offset += g.block_bytes;
    } else if (g.collective == Collective::kAllgather) {
      g.header_bytes = align_up(4 * (1 + (g.last - g.first)));
      for (std::size_t pos = g.first; pos < g.last; ++pos) {
        s.offset_in_block[s.order[pos]] += g.header_bytes;
      }
      g.block_bytes += g.header_bytes;
      send_offset += g.block_bytes;
      recv_offset += p * g.block_bytes;
      status_offset += p * g.header_bytes;
    } else {
      g.header_bytes = g.block_bytes;  // the status elements sit right after the payloads
      const std::size_t total = g.block_bytes + align_up(4 * (g.last - g.first));
      send_offset += total;
      if (s.sum_out_of_place) recv_offset += total;
      status_offset += align_up(dtype_size(g.dtype) * (g.last - g.first));
    }
  }
  GRADCOMM_CHECK(send_offset <= s.send_capacity && recv_offset <= s.recv_capacity &&
                     status_offset <= s.status_capacity,
                 ErrorCode::kInternal, "StepEngine: step ", step, " needs ", send_offset, " + ",
                 recv_offset, " bytes, over the ", s.send_capacity, " + ", s.recv_capacity,
                 " reserved from the compressor's bounds");
  // Grow-only: a step no larger than an earlier one allocates nothing.
  std::size_t scratch_needed = 0;
  for (const Impl::Group& g : s.groups) {
    if (g.collective != Collective::kAllgather) continue;
    for (std::size_t pos = g.first; pos < g.last; ++pos) {
      scratch_needed = std::max(scratch_needed, p * s.wire[s.order[pos]].bytes());
    }
  }
  s.recv.grow(recv_offset);
  s.scratch.grow(scratch_needed);
  std::uint64_t hash = fingerprint_bytes(&step, sizeof step);
  for (const LayerWire& w : s.wire) {
    const std::uint64_t words[3] = {static_cast<std::uint64_t>(w.collective), static_cast<std::uint64_t>(w.dtype),
                                    w.count};
    hash = fingerprint_bytes(words, sizeof words, hash);
  }
  s.layout_fingerprint = hash;
  // The schedule: each group's collectives in group order; a sparse group's phases in a row.
  s.slots.clear();
  s.sparse.begin_step(step);
  for (std::size_t gi = 0; gi < s.groups.size(); ++gi) {
    Impl::Group& g = s.groups[gi];
    g.first_slot = s.slots.size();
    std::size_t phases = 1;
    if (g.collective == Collective::kSparseAllreduce) {
      s.group_layers.clear();
      for (std::size_t pos = g.first; pos < g.last; ++pos) s.group_layers.push_back(s.order[pos]);
      g.sparse = s.sparse.add_group(s.group_layers, layers_, s.wire);
      phases = s.sparse.phases(g.sparse);
    }
    for (std::size_t phase = 0; phase < phases; ++phase) s.slots.push_back({gi, phase, false, false});
  }
  s.next_to_issue = 0;
  s.bad_layers = 0;
  s.first_bad.clear();
  s.bad_ranks_counted = 0;
  s.bad_rank.assign(p, 0);
  s.stats = {};
  s.in_step = true;
}

void StepEngine::submit(std::size_t layer, TensorView grad, TensorView out) { submit(layer, grad, out, 0); }

void StepEngine::submit(std::size_t layer, TensorView grad, TensorView out, std::size_t nonfinite_elsewhere) {
  Impl& s = *impl_;
  const detail::DeviceScope device_scope(s.device, s.device_index);
  GRADCOMM_CHECK(s.in_step, ErrorCode::kInvalidArgument, "StepEngine::submit(layer ", layer,
                 ") on rank ", rank_, " outside a step: call begin_step() first");
  GRADCOMM_CHECK(layer < layers_.size(), ErrorCode::kInvalidArgument, "StepEngine::submit: layer ",
                 layer, " out of range (", layers_.size(), " layers registered)");
  const LayerSpec& spec = layers_[layer];
  GRADCOMM_CHECK(!s.submitted[layer], ErrorCode::kInvalidArgument, "StepEngine::submit: layer ",
                 layer, " ('", spec.name, "') submitted twice in step ", s.step);
  GRADCOMM_CHECK(grad.numel() == spec.numel && out.numel() == spec.numel &&
                     grad.dtype() == spec.dtype && out.dtype() == spec.dtype,
                 ErrorCode::kSizeMismatch, "StepEngine::submit on rank ", rank_, ": layer ",
                 layer, " ('", spec.name, "') was registered with ", spec.numel, " ",
                 dtype_name(spec.dtype), " elements; got grad ", grad.describe(), " and out ",
                 out.describe());
  GRADCOMM_CHECK(grad.device() == s.device && out.device() == s.device &&
                     (s.device == Device::kCpu ||
                      (grad.device_index() == s.device_index && out.device_index() == s.device_index)),
                 ErrorCode::kInvalidArgument, "StepEngine::submit on rank ", rank_, ": layer ", layer,
                 " ('", spec.name, "') was registered on ", device_name(s.device), ":", s.device_index,
                 "; got grad on ", device_name(grad.device()), ":", grad.device_index(), " and out on ",
                 device_name(out.device()), ":", out.device_index());
  s.outs[layer] = out;
  s.submitted[layer] = 1;

  Impl::Group& g = s.groups[s.group_of[layer]];
  const LayerWire& w = s.wire[layer];
  TensorView payload(s.send.at(g.send_offset + s.offset_in_block[layer]), w.count, w.dtype, s.device,
                     s.device_index);
  if (spec.dtype != DType::kFloat32) {
    float* wide = s.wide(s.wide_grad);
    s.mover.widen(grad.data(), spec.dtype, wide, spec.numel);
    grad = TensorView(wide, spec.numel, DType::kFloat32, s.device, s.device_index);
  }
  s.local_nonfinite[layer] = compressor_->encode(layer, grad, payload).nonfinite + nonfinite_elsewhere;
  s.stats.payload_bytes += w.bytes();
  g.pending -= 1;
}

std::optional<CollectiveRequest> StepEngine::next_ready() {
  Impl& s = *impl_;
  const detail::DeviceScope device_scope(s.device, s.device_index);
  if (!s.in_step || s.next_to_issue == s.slots.size()) return std::nullopt;
  const std::size_t id = s.next_to_issue;
  Impl::Slot& slot = s.slots[id];
  Impl::Group& g = s.groups[slot.group];
  // A group starts once all its layers are encoded; a later phase once the one before it
  // (the slot just before) completed.
  if (slot.phase == 0 ? g.pending != 0 : !s.slots[id - 1].completed) return std::nullopt;
  s.next_to_issue += 1;
  slot.issued = true;
  g.issued = true;
  if (g.collective == Collective::kSparseAllreduce) return sparse_request(id);
  const auto p = static_cast<std::size_t>(world_size_);
  const std::size_t nlayers = g.last - g.first;
  std::byte* block = s.send.at(g.send_offset);
  CollectiveRequest request;
  request.id = id;
  request.collective = g.collective;
  if (g.collective == Collective::kAllreduce) {
    const std::size_t esize = dtype_size(g.dtype);
    std::byte* status = block + g.header_bytes;
    if (s.on_device()) {
#if defined(GRADCOMM_HAVE_CUDA)
      kernels::cuda::frame_allreduce_status(s.nonfinite_counts(), s.order_on_device(), g.first, nlayers, status,
                                            g.dtype == DType::kFloat16, s.mover.stream);
#endif
    } else {
      for (std::size_t pos = g.first; pos < g.last; ++pos) {
        const float flag = s.local_nonfinite[s.order[pos]] ? 1.0f : 0.0f;
        std::byte* at = status + (pos - g.first) * esize;
        if (g.dtype == DType::kFloat16) {
          const std::uint16_t h = float_to_half(flag);
          std::memcpy(at, &h, sizeof h);
        } else {
          std::memcpy(at, &flag, sizeof flag);
        }
      }
    }
    const std::size_t count = s.allreduce_count(g);
    request.send = TensorView(block, count, g.dtype, s.device, s.device_index);
    request.recv = TensorView(s.sum_of(g), count, g.dtype, s.device, s.device_index);
    s.stats.wire_bytes += allreduce_wire_bytes(count * esize, world_size_);
  } else {
    auto* header = reinterpret_cast<std::uint32_t*>(block);
    if (s.on_device()) {
#if defined(GRADCOMM_HAVE_CUDA)
      kernels::cuda::frame_allgather_header(s.nonfinite_counts(), s.order_on_device(), g.first, nlayers, header,
                                            g.header_bytes / 4, s.mover.stream);
#endif
    } else {
      header[0] = static_cast<std::uint32_t>(nlayers);
      for (std::size_t pos = g.first; pos < g.last; ++pos) {
        header[1 + pos - g.first] = static_cast<std::uint32_t>(
            std::min<std::size_t>(s.local_nonfinite[s.order[pos]], 0xffffffffu));
      }
      // The header's padding words are zero, so every byte on the wire is defined.
      for (std::size_t w = 1 + nlayers; w < g.header_bytes / 4; ++w) header[w] = 0;
    }
    request.send = TensorView(block, g.block_bytes, DType::kUInt8, s.device, s.device_index);
    request.recv = TensorView(s.recv.at(g.recv_offset), p * g.block_bytes, DType::kUInt8, s.device,
                              s.device_index);
    s.stats.wire_bytes += allgather_wire_bytes(g.block_bytes, world_size_);
  }
  s.stats.collectives += 1;
  return request;
}

TensorView StepEngine::decode_target(std::size_t layer) {
  Impl& s = *impl_;
  const LayerSpec& spec = layers_[layer];
  if (spec.dtype == DType::kFloat32) return s.outs[layer];
  return TensorView(s.wide(s.wide_out), spec.numel, DType::kFloat32, s.device, s.device_index);
}

void StepEngine::finish_decode(std::size_t layer) {
  Impl& s = *impl_;
  const LayerSpec& spec = layers_[layer];
  if (spec.dtype == DType::kFloat32) return;
  s.mover.narrow(s.wide(s.wide_out), spec.dtype, s.outs[layer].data(), spec.numel);
}

void StepEngine::decode_layer(std::size_t layer, TensorView received) {
  compressor_->decode(layer, received, decode_target(layer));
  finish_decode(layer);
}

void StepEngine::count_allreduce_status(std::size_t id, const std::byte* status) {
  Impl& s = *impl_;
  const Impl::Group& g = s.groups[id];
  const std::size_t esize = dtype_size(g.dtype);
  for (std::size_t pos = g.first; pos < g.last; ++pos) {
    const std::byte* at = status + (pos - g.first) * esize;
    float ranks_bad = 0;
    if (g.dtype == DType::kFloat16) {
      std::uint16_t h;
      std::memcpy(&h, at, sizeof h);
      ranks_bad = half_to_float(h);
    } else {
      std::memcpy(&ranks_bad, at, sizeof ranks_bad);
    }
    if (ranks_bad == 0.0f) continue;
    s.bad_layers += 1;
    s.bad_ranks_counted = std::max(s.bad_ranks_counted, static_cast<std::size_t>(ranks_bad));
    if (s.first_bad.empty()) {
      s.first_bad = "layer '" + layers_[s.order[pos]].name + "' on " +
                    std::to_string(static_cast<int>(ranks_bad)) + " rank(s)";
    }
  }
}

void StepEngine::count_allgather_headers(std::size_t id, const std::byte* headers, std::size_t pitch) {
  Impl& s = *impl_;
  const Impl::Group& g = s.groups[id];
  const std::size_t nlayers = g.last - g.first;
  for (std::size_t r = 0; r < static_cast<std::size_t>(world_size_); ++r) {
    const auto* header = reinterpret_cast<const std::uint32_t*>(headers + r * pitch);
    GRADCOMM_CHECK(header[0] == nlayers, ErrorCode::kCorruptPayload, "StepEngine on rank ", rank_,
                   ": rank ", r, " framed ", header[0], " layers in a group of ", nlayers,
                   " (corrupt payload, or ranks out of step)");
    for (std::size_t i = 0; i < nlayers; ++i) {
      if (header[1 + i] == 0) continue;
      s.bad_layers += 1;
      s.bad_rank[r] = 1;
      if (s.first_bad.empty()) {
        s.first_bad = "layer '" + layers_[s.order[g.first + i]].name + "' on rank " +
                      std::to_string(r) + " (" + std::to_string(header[1 + i]) + " elements)";
      }
    }
  }
}

void StepEngine::complete(std::size_t id) {
  Impl& s = *impl_;
  const detail::DeviceScope device_scope(s.device, s.device_index);
  GRADCOMM_CHECK(s.in_step && id < s.slots.size() && s.slots[id].issued && !s.slots[id].completed,
                 ErrorCode::kInvalidArgument, "StepEngine::complete(", id, ") on rank ", rank_,
                 ": not a collective of step ", s.step, " that was issued and not completed (",
                 s.next_to_issue, " of ", s.slots.size(), " issued)");
  s.slots[id].completed = true;
  const std::size_t group = s.slots[id].group;
  Impl::Group& g = s.groups[group];
  if (g.collective == Collective::kSparseAllreduce) {
    complete_sparse(id);
    return;
  }
  g.completed = true;
  const auto p = static_cast<std::size_t>(world_size_);
  const std::size_t nlayers = g.last - g.first;
  if (g.collective == Collective::kAllreduce) {
    std::byte* block = s.sum_of(g);
    if (s.on_device()) {  // evaluated after the step's one synchronisation
      s.mover.copy(s.status_host.at(g.status_offset), block + g.header_bytes, nlayers * dtype_size(g.dtype));
    } else {
      count_allreduce_status(group, block + g.header_bytes);
    }
    for (std::size_t pos = g.first; pos < g.last; ++pos) {
      const std::size_t layer = s.order[pos];
      decode_layer(layer, TensorView(block + s.offset_in_block[layer], s.wire[layer].count, g.dtype,
                                     s.device, s.device_index));
    }
    return;
  }
  // Allgather: validate each rank's header (on the host now; for device layers after the
  // step's synchronisation: the decoders validate what they read on the device), then give
  // the compressor its layer's payloads contiguously, in rank order.
  const std::byte* recv = s.recv.at(g.recv_offset);
  if (s.on_device()) {
    s.mover.copy_rows(s.status_host.at(g.status_offset), g.header_bytes, recv, g.block_bytes,
                      g.header_bytes, p);
  } else {
    count_allgather_headers(group, recv, g.block_bytes);
  }
  for (std::size_t pos = g.first; pos < g.last; ++pos) {
    const std::size_t layer = s.order[pos];
    const std::size_t bytes = s.wire[layer].bytes();
    s.mover.copy_rows(s.scratch.at(0), bytes, recv + s.offset_in_block[layer], g.block_bytes, bytes, p);
    decode_layer(layer, TensorView(s.scratch.at(0), p * bytes, DType::kUInt8, s.device, s.device_index));
  }
}

void StepEngine::check_all_submitted() const {
  const Impl& s = *impl_;
  GRADCOMM_CHECK(s.in_step, ErrorCode::kInvalidArgument, "StepEngine on rank ", rank_,
                 ": no step in progress: call begin_step() first");
  for (std::size_t layer = 0; layer < layers_.size(); ++layer) {
    GRADCOMM_CHECK(s.submitted[layer], ErrorCode::kInvalidArgument, "finish_step on rank ", rank_,
                   ": layer ", layer, " ('", layers_[layer].name, "') was not submitted in step ",
                   s.step);
  }
}

const StepStats& StepEngine::finish_step() {
  Impl& s = *impl_;
  const detail::DeviceScope device_scope(s.device, s.device_index);
  GRADCOMM_CHECK(s.in_step, ErrorCode::kInvalidArgument, "StepEngine::finish_step on rank ",
                 rank_, " outside a step: call begin_step() first");
  check_all_submitted();
  for (std::size_t id = 0; id < s.slots.size(); ++id) {
    GRADCOMM_CHECK(s.slots[id].completed, ErrorCode::kInvalidArgument,
                   "StepEngine::finish_step on rank ", rank_, ": collective ", id, " of ",
                   s.slots.size(), " in step ", s.step, " has not completed");
  }
  s.in_step = false;
  if (s.on_device()) {
    // The step's one host synchronisation: the status words of every group and the
    // decoders' verdicts are in pinned memory once the stream has drained.
    const std::size_t n = s.layer_count;
    s.mover.copy(s.status_host.at(s.status_capacity), s.corrupt_payloads(), 4 * n);
    s.mover.synchronize();
    for (std::size_t layer = 0; layer < n; ++layer) {
      std::uint32_t from_rank = 0;
      std::memcpy(&from_rank, s.status_host.at(s.status_capacity + 4 * layer), 4);
      GRADCOMM_CHECK(from_rank == 0xffffffffu, ErrorCode::kCorruptPayload, "StepEngine on rank ", rank_,
                     ": step ", s.step, ": the payload rank ", from_rank, " sent for layer ", layer, " ('",
                     layers_[layer].name, "') failed validation on the device (corrupt payload, or "
                     "ranks out of step)");
    }
    for (std::size_t id = 0; id < s.groups.size(); ++id) {
      const Impl::Group& g = s.groups[id];
      if (g.collective == Collective::kAllreduce) {
        count_allreduce_status(id, s.status_host.at(g.status_offset));
      } else {
        count_allgather_headers(id, s.status_host.at(g.status_offset), g.header_bytes);
      }
    }
  }
  s.stats.nonfinite = s.bad_layers;
  if (s.bad_layers == 0) return s.stats;
  switch (options_.nonfinite) {
    case NonFinitePolicy::kError:
      GRADCOMM_THROW(ErrorCode::kNonFinite, "step ", s.step, " on rank ", rank_,
                     ": ", s.bad_ranks(), " of ", world_size_,
                     " ranks met NaN or Inf in the gradients of ", s.bad_layers,
                     " layer(s), first ", s.first_bad,
                     " (non-finite policy 'error'; the 'skip_step' or 'zero' policy goes on)");
    case NonFinitePolicy::kSkipStep:
      // Error feedback loses nothing: what each rank sent goes back into its residuals.
      for (const Impl::Group& g : s.groups) {
        for (std::size_t pos = g.first; pos < g.last; ++pos) {
          const std::size_t layer = s.order[pos];
          const LayerWire& w = s.wire[layer];
          if (g.collective == Collective::kSparseAllreduce) {
            // Decode gave back what the selection dropped; the rest goes back now.
            detail::SparseAllreduceGroup::keep_selected(s.send.at(g.send_offset + s.offset_in_block[layer]),
                                                        w.slots, w.value_dtype,
                                                        s.sparse.group(g.sparse).selected_indices(pos - g.first));
          }
          compressor_->on_step_skipped(
              layer, TensorView(s.send.at(g.send_offset + s.offset_in_block[layer]), w.count,
                                w.dtype, s.device, s.device_index));
        }
      }
      for (const TensorView& out : s.outs) s.mover.zero(out.data(), out.nbytes());
      s.stats.skipped = true;
      break;
    case NonFinitePolicy::kZero:
      break;
  }
  return s.stats;
}

void StepEngine::abandon_step() noexcept {
  impl_->in_step = false;
  impl_->groups.clear();
  impl_->slots.clear();
}

}  // namespace gradcomm
