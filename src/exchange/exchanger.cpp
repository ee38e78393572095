#include "gradcomm/exchanger.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "core/float16.h"
#include "gradcomm/agreement.h"

namespace gradcomm {

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

constexpr std::size_t kAlign = 8;
constexpr std::size_t align_up(std::size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Grow-only byte buffer: sized at setup and on the rare step that needs more (a schedule
// raising the payload), so steady-state steps never allocate.
struct Arena {
  std::vector<std::byte> bytes;
  void reserve(std::size_t n) {
    if (bytes.size() < n) bytes.resize(n);
  }
  std::byte* at(std::size_t offset) { return bytes.data() + offset; }
};

}  // namespace

// Wire layout of one step (docs/wire-format.md, "exchange framing"):
// - layers are taken in backward order (the reverse of registration) and cut into groups:
//   consecutive allreduce layers of one dtype up to bucket_bytes, and consecutive
//   allgather layers up to bucket_bytes;
// - an allreduce group is the layers' payloads (each padded to 8 bytes), then one status
//   element per layer, of the group's dtype: each rank adds 1 where its layer met a
//   non-finite value, so after the sum every rank sees how many ranks did, per layer;
// - an allgather group sends, per rank, a header of uint32 words
//   [layer count, non-finite count of each layer], padded to 8 bytes, then each layer's
//   payload padded to 8 bytes; every rank receives all ranks' blocks in rank order.
struct Exchanger::Impl {
  struct Group {
    Collective collective;
    DType dtype;
    std::size_t first, last;    // positions [first, last) in backward order
    std::size_t send_offset;    // into send arena
    std::size_t block_bytes;    // per rank
    std::size_t header_bytes;   // allgather: header size; allreduce: offset of the status elements
    std::size_t recv_offset;    // into recv arena: allgather, and allreduce under kSkipStep
    std::size_t pending;        // layers not yet encoded
    WorkHandle work;
  };

  std::vector<std::size_t> order;         // position -> layer (backward order)
  std::vector<std::size_t> position;      // layer -> position
  std::vector<LayerWire> wire;            // this step, by layer
  std::vector<std::size_t> group_of;      // by layer
  std::vector<std::size_t> offset_in_block;  // by layer: payload offset within its block
  std::vector<TensorView> grads, outs;    // by layer, this step
  std::vector<std::size_t> local_nonfinite;  // by layer, this rank
  std::vector<char> submitted;            // by layer
  std::vector<Group> groups;
  std::size_t next_to_issue = 0;
  bool in_step = false;
  Arena send, recv, scratch;
  StepStats stats;

  // Under kSkipStep a skipped step gives every payload back to its compressor
  // (on_step_skipped), so allreduce groups are summed out of place into the recv arena and
  // this rank's payloads survive the sum. Set once, from the options.
  bool sum_out_of_place = false;
  // Where an allreduce group's sum lands.
  std::byte* sum_of(const Group& g) { return sum_out_of_place ? recv.at(g.recv_offset) : send.at(g.send_offset); }
};

Exchanger::Exchanger(Communicator& comm, std::unique_ptr<Compressor> compressor,
                     std::vector<LayerSpec> layers, ExchangerOptions options)
    : comm_(comm), compressor_(std::move(compressor)), layers_(std::move(layers)),
      options_(options), impl_(std::make_unique<Impl>()) {
  GRADCOMM_CHECK_ARG(compressor_ != nullptr, "Exchanger: no compressor given");
  GRADCOMM_CHECK_ARG(options_.bucket_bytes > 0, "Exchanger: bucket_bytes must be positive");
  GRADCOMM_CHECK_ARG(comm_.device() == Device::kCpu, "Exchanger: ", comm_.describe(),
                     " takes device buffers; this Exchanger stages payloads on the host");
  compressor_->setup(layers_, comm_.size(), comm_.rank());
  check_agreement(comm_, layers_,
                  compressor_->settings_fingerprint() + " bucket_bytes=" +
                      std::to_string(options_.bucket_bytes) + " nonfinite=" +
                      nonfinite_policy_name(options_.nonfinite),
                  "Exchanger setup (" + compressor_->name() + ")");
  Impl& s = *impl_;
  const std::size_t n = layers_.size();
  s.order.resize(n);
  s.position.resize(n);
  for (std::size_t pos = 0; pos < n; ++pos) {
    s.order[pos] = n - 1 - pos;
    s.position[n - 1 - pos] = pos;
  }
  s.wire.resize(n);
  s.group_of.resize(n);
  s.offset_in_block.resize(n);
  s.grads.resize(n);
  s.outs.resize(n);
  s.local_nonfinite.resize(n);
  s.submitted.resize(n);
  s.sum_out_of_place = options_.nonfinite == NonFinitePolicy::kSkipStep;
  s.groups.reserve(n);
  // Workspace from the compressor's bounds, so the steady state never allocates.
  std::size_t send_bound = 64, scratch_bound = 0;
  for (std::size_t layer = 0; layer < n; ++layer) {
    const std::size_t max_bytes = compressor_->max_payload_bytes(layer);
    send_bound += align_up(max_bytes) + 2 * kAlign + 8;
    scratch_bound = std::max(scratch_bound, max_bytes * static_cast<std::size_t>(comm_.size()));
  }
  s.send.reserve(send_bound);
  s.scratch.reserve(scratch_bound);
}

Exchanger::~Exchanger() = default;

void Exchanger::restore_step(std::int64_t step) {
  GRADCOMM_CHECK(!impl_->in_step, ErrorCode::kInvalidArgument, "Exchanger::restore_step(", step,
                 ") on rank ", comm_.rank(), " inside step ", step_, ": finish the step first");
  GRADCOMM_CHECK_ARG(step >= 0, "Exchanger::restore_step: step ", step, " < 0");
  step_ = step;
}

void Exchanger::begin_step() {
  Impl& s = *impl_;
  GRADCOMM_CHECK(!s.in_step, ErrorCode::kInvalidArgument,
                 "Exchanger::begin_step: step ", step_, " was begun and not finished");
  compressor_->set_step(step_);
  const std::size_t n = layers_.size();
  const std::size_t p = static_cast<std::size_t>(comm_.size());
  s.groups.clear();
  for (std::size_t pos = 0; pos < n; ++pos) {
    const std::size_t layer = s.order[pos];
    const LayerWire w = compressor_->wire(layer);
    GRADCOMM_CHECK(w.bytes() <= compressor_->max_payload_bytes(layer), ErrorCode::kInternal,
                   compressor_->name(), ": layer ", layer, " wants ", w.bytes(),
                   " payload bytes, over its declared maximum ", compressor_->max_payload_bytes(layer));
    GRADCOMM_CHECK(w.collective == Collective::kAllgather ? w.dtype == DType::kUInt8
                                                          : (w.dtype == DType::kFloat32 || w.dtype == DType::kFloat16),
                   ErrorCode::kInternal, compressor_->name(), ": layer ", layer,
                   " has an unsupported wire dtype ", dtype_name(w.dtype));
    s.wire[layer] = w;
    s.submitted[layer] = 0;
    s.local_nonfinite[layer] = 0;
    const std::size_t bytes = align_up(w.bytes());
    bool join = false;
    if (!s.groups.empty()) {
      const Impl::Group& g = s.groups.back();
      join = g.collective == w.collective && g.dtype == w.dtype &&
             g.block_bytes + bytes <= options_.bucket_bytes;
    }
    if (!join) {
      Impl::Group g{};
      g.collective = w.collective;
      g.dtype = w.dtype;
      g.first = pos;
      s.groups.push_back(std::move(g));
    }
    Impl::Group& g = s.groups.back();
    g.last = pos + 1;
    g.pending += 1;
    s.group_of[layer] = s.groups.size() - 1;
    s.offset_in_block[layer] = g.block_bytes;  // rebased below for allgather headers
    g.block_bytes += bytes;
  }
  // Place the groups; allgather blocks start with a header, so shift their payloads.
  std::size_t send_offset = 0, recv_offset = 0;
  for (Impl::Group& g : s.groups) {
    g.send_offset = send_offset;
    g.recv_offset = recv_offset;
    if (g.collective == Collective::kAllgather) {
      g.header_bytes = align_up(4 * (1 + (g.last - g.first)));
      for (std::size_t pos = g.first; pos < g.last; ++pos) s.offset_in_block[s.order[pos]] += g.header_bytes;
      g.block_bytes += g.header_bytes;
      send_offset += g.block_bytes;
      recv_offset += p * g.block_bytes;
    } else {
      g.header_bytes = g.block_bytes;  // the status elements sit right after the payloads
      const std::size_t total = g.block_bytes + align_up(4 * (g.last - g.first));
      send_offset += total;
      if (s.sum_out_of_place) recv_offset += total;
    }
  }
  s.send.reserve(send_offset);
  s.recv.reserve(recv_offset);
  s.next_to_issue = 0;
  s.stats = {};
  s.in_step = true;
  traffic_at_begin_ = comm_.traffic();
}

void Exchanger::submit(std::size_t layer, TensorView grad, TensorView out) {
  Impl& s = *impl_;
  GRADCOMM_CHECK(s.in_step, ErrorCode::kInvalidArgument, "Exchanger::submit(layer ", layer,
                 ") outside a step: call begin_step() first");
  GRADCOMM_CHECK(layer < layers_.size(), ErrorCode::kInvalidArgument, "Exchanger::submit: layer ",
                 layer, " out of range (", layers_.size(), " layers registered)");
  const LayerSpec& spec = layers_[layer];
  GRADCOMM_CHECK(!s.submitted[layer], ErrorCode::kInvalidArgument, "Exchanger::submit: layer ",
                 layer, " ('", spec.name, "') submitted twice in step ", step_);
  GRADCOMM_CHECK(grad.numel() == spec.numel && out.numel() == spec.numel &&
                     grad.dtype() == DType::kFloat32 && out.dtype() == DType::kFloat32,
                 ErrorCode::kSizeMismatch, "Exchanger::submit on rank ", comm_.rank(), ": layer ",
                 layer, " ('", spec.name, "') was registered with ", spec.numel,
                 " float32 elements; got grad ", grad.describe(), " and out ", out.describe());
  s.grads[layer] = grad;
  s.outs[layer] = out;
  s.submitted[layer] = 1;

  Impl::Group& g = s.groups[s.group_of[layer]];
  const LayerWire& w = s.wire[layer];
  std::byte* slot = s.send.at(g.send_offset + s.offset_in_block[layer]);
  TensorView payload(slot, w.count, w.dtype);
  s.local_nonfinite[layer] = compressor_->encode(layer, grad, payload).nonfinite;
  s.stats.payload_bytes += w.bytes();
  g.pending -= 1;

  // Start every group that is complete and next in the agreed order; poke the ones in
  // flight so MPI progresses them while the caller computes the next gradient.
  const std::size_t p = static_cast<std::size_t>(comm_.size());
  while (s.next_to_issue < s.groups.size() && s.groups[s.next_to_issue].pending == 0) {
    Impl::Group& ready = s.groups[s.next_to_issue++];
    std::byte* block = s.send.at(ready.send_offset);
    if (ready.collective == Collective::kAllreduce) {
      const std::size_t esize = dtype_size(ready.dtype);
      for (std::size_t pos = ready.first; pos < ready.last; ++pos) {
        const float flag = s.local_nonfinite[s.order[pos]] ? 1.0f : 0.0f;
        std::byte* status = block + ready.header_bytes + (pos - ready.first) * esize;
        if (ready.dtype == DType::kFloat16) {
          const std::uint16_t h = float_to_half(flag);
          std::memcpy(status, &h, sizeof h);
        } else {
          std::memcpy(status, &flag, sizeof flag);
        }
      }
      const std::size_t count = ready.header_bytes / esize + (ready.last - ready.first);
      TensorView send(block, count, ready.dtype);
      TensorView sum(s.sum_of(ready), count, ready.dtype);
      ready.work = comm_.allreduce(send, sum, ReduceOp::kSum);
    } else {
      auto* header = reinterpret_cast<std::uint32_t*>(block);
      header[0] = static_cast<std::uint32_t>(ready.last - ready.first);
      for (std::size_t pos = ready.first; pos < ready.last; ++pos) {
        header[1 + pos - ready.first] = static_cast<std::uint32_t>(
            std::min<std::size_t>(s.local_nonfinite[s.order[pos]], 0xffffffffu));
      }
      TensorView send(block, ready.block_bytes, DType::kUInt8);
      TensorView recv(s.recv.at(ready.recv_offset), p * ready.block_bytes, DType::kUInt8);
      ready.work = comm_.allgather(send, recv);
    }
  }
  for (std::size_t i = 0; i < s.next_to_issue; ++i) {
    if (s.groups[i].work) s.groups[i].work->test();
  }
}

const StepStats& Exchanger::finish_step() {
  Impl& s = *impl_;
  GRADCOMM_CHECK(s.in_step, ErrorCode::kInvalidArgument,
                 "Exchanger::finish_step outside a step: call begin_step() first");
  for (std::size_t layer = 0; layer < layers_.size(); ++layer) {
    GRADCOMM_CHECK(s.submitted[layer], ErrorCode::kInvalidArgument, "Exchanger::finish_step on rank ",
                   comm_.rank(), ": layer ", layer, " ('", layers_[layer].name,
                   "') was not submitted in step ", step_);
  }
  s.in_step = false;
  const std::size_t p = static_cast<std::size_t>(comm_.size());
  std::size_t bad_layers = 0;
  std::string first_bad;
  for (Impl::Group& g : s.groups) {
    g.work->wait();
    g.work.reset();
    if (g.collective == Collective::kAllreduce) {
      std::byte* block = s.sum_of(g);
      const std::size_t esize = dtype_size(g.dtype);
      for (std::size_t pos = g.first; pos < g.last; ++pos) {
        const std::byte* status = block + g.header_bytes + (pos - g.first) * esize;
        float ranks_bad = 0;
        if (g.dtype == DType::kFloat16) {
          std::uint16_t h;
          std::memcpy(&h, status, sizeof h);
          ranks_bad = half_to_float(h);
        } else {
          std::memcpy(&ranks_bad, status, sizeof ranks_bad);
        }
        if (ranks_bad == 0.0f) continue;
        bad_layers += 1;
        if (first_bad.empty()) {
          first_bad = "layer '" + layers_[s.order[pos]].name + "' on " +
                      std::to_string(static_cast<int>(ranks_bad)) + " rank(s)";
        }
      }
      for (std::size_t pos = g.first; pos < g.last; ++pos) {
        const std::size_t layer = s.order[pos];
        TensorView received(block + s.offset_in_block[layer], s.wire[layer].count, g.dtype);
        compressor_->decode(layer, received, s.outs[layer]);
      }
      continue;
    }
    // Allgather: validate each rank's header, then give the compressor its layer's
    // payloads contiguously, in rank order.
    const std::byte* recv = s.recv.at(g.recv_offset);
    const std::size_t nlayers = g.last - g.first;
    for (std::size_t r = 0; r < p; ++r) {
      const auto* header = reinterpret_cast<const std::uint32_t*>(recv + r * g.block_bytes);
      GRADCOMM_CHECK(header[0] == nlayers, ErrorCode::kCorruptPayload, "Exchanger on rank ",
                     comm_.rank(), ": rank ", r, " framed ", header[0], " layers in a group of ",
                     nlayers, " (corrupt payload, or ranks out of step)");
      for (std::size_t i = 0; i < nlayers; ++i) {
        if (header[1 + i] == 0) continue;
        bad_layers += 1;
        if (first_bad.empty()) {
          first_bad = "layer '" + layers_[s.order[g.first + i]].name + "' on rank " +
                      std::to_string(r) + " (" + std::to_string(header[1 + i]) + " elements)";
        }
      }
    }
    for (std::size_t pos = g.first; pos < g.last; ++pos) {
      const std::size_t layer = s.order[pos];
      const std::size_t bytes = s.wire[layer].bytes();
      s.scratch.reserve(p * bytes);
      for (std::size_t r = 0; r < p; ++r) {
        std::memcpy(s.scratch.at(r * bytes), recv + r * g.block_bytes + s.offset_in_block[layer], bytes);
      }
      compressor_->decode(layer, TensorView(s.scratch.at(0), p * bytes, DType::kUInt8), s.outs[layer]);
    }
  }
  const TrafficCounters& now = comm_.traffic();
  s.stats.wire_bytes = now.bytes_sent - traffic_at_begin_.bytes_sent;
  s.stats.collectives = now.collectives - traffic_at_begin_.collectives;
  s.stats.nonfinite = bad_layers;
  const std::int64_t this_step = step_++;
  if (bad_layers != 0) {
    switch (options_.nonfinite) {
      case NonFinitePolicy::kError:
        GRADCOMM_THROW(ErrorCode::kNonFinite, "step ", this_step, " on rank ", comm_.rank(),
                       ": non-finite gradient values in ", bad_layers, " layer(s), first ",
                       first_bad, " (policy: error; set NonFinitePolicy::kSkipStep or kZero to go on)");
      case NonFinitePolicy::kSkipStep:
        // Error feedback loses nothing: what each rank sent goes back into its residuals.
        for (const Impl::Group& g : s.groups) {
          for (std::size_t pos = g.first; pos < g.last; ++pos) {
            const std::size_t layer = s.order[pos];
            const LayerWire& w = s.wire[layer];
            compressor_->on_step_skipped(
                layer, TensorView(s.send.at(g.send_offset + s.offset_in_block[layer]), w.count, w.dtype));
          }
        }
        for (const TensorView& out : s.outs) std::memset(out.data(), 0, out.nbytes());
        s.stats.skipped = true;
        break;
      case NonFinitePolicy::kZero:
        break;
    }
  }
  return s.stats;
}

const StepStats& Exchanger::exchange(std::span<const TensorView> grads,
                                     std::span<const TensorView> outs) {
  GRADCOMM_CHECK(grads.size() == layers_.size() && outs.size() == layers_.size(),
                 ErrorCode::kSizeMismatch, "Exchanger::exchange: ", grads.size(), " gradients and ",
                 outs.size(), " outputs for ", layers_.size(), " layers");
  begin_step();
  for (std::size_t pos = 0; pos < layers_.size(); ++pos) {
    const std::size_t layer = layers_.size() - 1 - pos;
    submit(layer, grads[layer], outs[layer]);
  }
  return finish_step();
}

}  // namespace gradcomm
