#include "exchange/hierarchical_steps.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "gradcomm/error.h"
#include "kernels/cpu/convert_kernels.h"
#include "kernels/cpu/dgc_kernels.h"

namespace gradcomm::detail {

namespace {
// Counts travel as float32 among the summed shards; a count this large says enough.
constexpr float kMostCounted = 16777216.0f;
}  // namespace

std::size_t HierarchicalSteps::shard_begin(std::size_t layer, std::size_t r) const {
  return static_cast<std::size_t>(static_cast<unsigned __int128>(specs_[layer].numel) * r / R_);
}

std::size_t HierarchicalSteps::shard_size(std::size_t layer, std::size_t r) const {
  return shard_begin(layer, r + 1) - shard_begin(layer, r);
}

HierarchicalSteps::HierarchicalSteps(Communicator& local, std::span<const LayerSpec> layers, std::size_t bucket_bytes)
    : local_(local), R_(static_cast<std::size_t>(local.size())), me_(static_cast<std::size_t>(local.rank())),
      specs_(layers.begin(), layers.end()) {
  GRADCOMM_CHECK_ARG(bucket_bytes > 0, "hierarchical exchange: bucket_bytes must be positive");
  const std::size_t n = specs_.size();
  for (const LayerSpec& spec : specs_) {
    LayerSpec shard = spec;
    shard.name = spec.name + "[shard " + std::to_string(me_) + "/" + std::to_string(R_) + "]";
    shard.dtype = DType::kFloat32;  // the host's sum, in float32 whatever the gradient's dtype
    shard_specs_.push_back(shard);
  }
  for (std::size_t l = 0; l < n; ++l) shard_specs_[l].numel = shard_size(l, me_);
  // Buckets in backward order, as the engine's groups: up to bucket_bytes of float32.
  bucket_of_.resize(n);
  at_.assign(n, std::vector<std::size_t>(R_, 0));
  shard_at_.resize(n);
  std::size_t bytes = 0;
  for (std::size_t pos = 0; pos < n; ++pos) {
    const std::size_t layer = n - 1 - pos;
    const std::size_t layer_bytes = 4 * specs_[layer].numel;
    if (buckets_.empty() || (bytes + layer_bytes > bucket_bytes && !buckets_.back().layers.empty())) {
      buckets_.emplace_back();
      bytes = 0;
    }
    buckets_.back().layers.push_back(layer);
    bucket_of_[layer] = buckets_.size() - 1;
    bytes += layer_bytes;
  }
  std::size_t send = 0, recv = 0, gather = 0, shard = 0;
  for (Bucket& b : buckets_) {
    const std::size_t L = b.layers.size();
    b.send_counts.assign(R_, 0);
    b.recv_counts.assign(R_, 0);
    b.gather_counts.assign(R_, 0);
    for (std::size_t r = 0; r < R_; ++r) {
      for (std::size_t layer : b.layers) {
        at_[layer][r] = b.gather_counts[r];
        b.gather_counts[r] += shard_size(layer, r);
      }
      b.send_counts[r] = b.gather_counts[r] + L;
    }
    for (std::size_t r = 0; r < R_; ++r) b.recv_counts[r] = b.gather_counts[me_] + L;
    b.send_offset = send;
    b.recv_offset = recv;
    b.gather_offset = gather;
    b.shard_offset = shard;
    b.shard_floats = b.gather_counts[me_];
    for (std::size_t layer : b.layers) shard_at_[layer] = shard + at_[layer][me_];
    for (std::size_t r = 0; r < R_; ++r) {
      send += b.send_counts[r];
      recv += b.recv_counts[r];
      gather += b.gather_counts[r];
    }
    shard += b.shard_floats;
  }
  send_.assign(send, 0.0f);
  recv_.assign(recv, 0.0f);
  gather_.assign(gather, 0.0f);
  shard_grad_.assign(shard, 0.0f);
  shard_out_.assign(shard, 0.0f);
  std::size_t widest = 0;
  for (const LayerSpec& spec : specs_) {
    if (spec.dtype != DType::kFloat32) widest = std::max(widest, spec.numel);
  }
  wide_.assign(widest, 0.0f);
  host_nonfinite_.assign(n, 0.0f);
  outs_.resize(n);
  submitted_.assign(n, 0);
  works_.resize(buckets_.size());
}

void HierarchicalSteps::begin_step() {
  for (Bucket& b : buckets_) {
    b.pending = b.layers.size();
    b.issued = b.forwarded = false;
  }
  std::fill(submitted_.begin(), submitted_.end(), 0);
  next_issue_ = next_forward_ = 0;
  wire_bytes_ = collectives_ = 0;
  in_step_ = true;
}

void HierarchicalSteps::submit(std::size_t layer, TensorView grad, TensorView out) {
  GRADCOMM_CHECK(in_step_, ErrorCode::kInvalidArgument, "hierarchical exchange: submit(layer ", layer,
                 ") outside a step: call begin_step() first");
  GRADCOMM_CHECK(layer < specs_.size(), ErrorCode::kInvalidArgument, "hierarchical exchange: layer ", layer,
                 " out of range (", specs_.size(), " layers registered)");
  const LayerSpec& spec = specs_[layer];
  GRADCOMM_CHECK(!submitted_[layer], ErrorCode::kInvalidArgument, "hierarchical exchange: layer ", layer, " ('",
                 spec.name, "') submitted twice in a step");
  GRADCOMM_CHECK(grad.numel() == spec.numel && out.numel() == spec.numel && grad.dtype() == spec.dtype &&
                     out.dtype() == spec.dtype,
                 ErrorCode::kSizeMismatch, "hierarchical exchange on local rank ", me_, ": layer ", layer, " ('",
                 spec.name, "') was registered with ", spec.numel, " ", dtype_name(spec.dtype), " elements; got grad ",
                 grad.describe(), " and out ", out.describe());
  submitted_[layer] = 1;
  outs_[layer] = out;
  const float* in = nullptr;
  if (spec.dtype == DType::kFloat32) {
    in = static_cast<const float*>(grad.data());
  } else {
    kernels::widen_to_f32(static_cast<const std::uint16_t*>(grad.data()), spec.dtype, wide_.data(), spec.numel);
    in = wide_.data();
  }
  Bucket& b = buckets_[bucket_of_[layer]];
  std::size_t nonfinite = 0;
  std::size_t part = b.send_offset;
  for (std::size_t r = 0; r < R_; ++r) {
    nonfinite += kernels::dgc_scaled_copy_f32(in + shard_begin(layer, r), 1.0f, send_.data() + part + at_[layer][r],
                                              shard_size(layer, r));
    part += b.send_counts[r];
  }
  const float status = std::min(static_cast<float>(nonfinite), kMostCounted);
  part = b.send_offset;
  const std::size_t index = static_cast<std::size_t>(std::find(b.layers.begin(), b.layers.end(), layer) - b.layers.begin());
  for (std::size_t r = 0; r < R_; ++r) {
    send_[part + b.gather_counts[r] + index] = status;
    part += b.send_counts[r];
  }
  b.pending -= 1;
  start_ready();
}

void HierarchicalSteps::start_ready() {
  while (next_issue_ < buckets_.size() && buckets_[next_issue_].pending == 0) {
    Bucket& b = buckets_[next_issue_];
    std::size_t send_total = 0, recv_total = 0;
    for (std::size_t r = 0; r < R_; ++r) {
      send_total += b.send_counts[r];
      recv_total += b.recv_counts[r];
    }
    works_[next_issue_] = local_.alltoallv(TensorView(send_.data() + b.send_offset, send_total, DType::kFloat32),
                                           b.send_counts,
                                           TensorView(recv_.data() + b.recv_offset, recv_total, DType::kFloat32),
                                           b.recv_counts);
    wire_bytes_ += alltoallv_wire_bytes(b.send_counts, 4, static_cast<int>(me_));
    collectives_ += 1;
    b.issued = true;
    ++next_issue_;
  }
}

void HierarchicalSteps::check_all_submitted() const {
  for (std::size_t layer = 0; layer < specs_.size(); ++layer) {
    GRADCOMM_CHECK(submitted_[layer], ErrorCode::kInvalidArgument, "finish_step on local rank ", me_, ": layer ", layer,
                   " ('", specs_[layer].name, "') was not submitted in this step");
  }
}

void HierarchicalSteps::sum_bucket(std::size_t bi) {
  Bucket& b = buckets_[bi];
  const std::size_t mine = b.gather_counts[me_], L = b.layers.size();
  float* sum = shard_grad_.data() + b.shard_offset;
  const float* part = recv_.data() + b.recv_offset;
  // In rank order, so the sum is the same on every rank that computes it.
  std::copy_n(part, mine, sum);
  for (std::size_t i = 0; i < L; ++i) host_nonfinite_[b.layers[i]] = part[mine + i];
  for (std::size_t r = 1; r < R_; ++r) {
    part += b.recv_counts[r - 1];
    for (std::size_t e = 0; e < mine; ++e) sum[e] += part[e];
    for (std::size_t i = 0; i < L; ++i) host_nonfinite_[b.layers[i]] += part[mine + i];
  }
  const float inv = 1.0f / static_cast<float>(R_);
  for (std::size_t e = 0; e < mine; ++e) sum[e] *= inv;
}

void HierarchicalSteps::forward(EngineDriver& inner, bool wait) {
  while (next_forward_ < next_issue_) {
    WorkHandle& work = works_[next_forward_];
    if (wait) {
      work->wait();
    } else if (!work->test()) {
      return;
    }
    work.reset();
    sum_bucket(next_forward_);
    Bucket& b = buckets_[next_forward_];
    for (std::size_t layer : b.layers) {
      const std::size_t size = shard_specs_[layer].numel;
      inner.engine().submit(layer, TensorView(shard_grad_.data() + shard_at_[layer], size, DType::kFloat32),
                            TensorView(shard_out_.data() + shard_at_[layer], size, DType::kFloat32),
                            static_cast<std::size_t>(host_nonfinite_[layer]));
      inner.issue_ready();
    }
    b.forwarded = true;
    ++next_forward_;
  }
  GRADCOMM_CHECK(!wait || next_forward_ == buckets_.size(), ErrorCode::kInternal,
                 "hierarchical exchange: ", buckets_.size() - next_forward_, " bucket(s) never started");
}

void HierarchicalSteps::gather() {
  for (std::size_t bi = 0; bi < buckets_.size(); ++bi) {
    Bucket& b = buckets_[bi];
    std::size_t total = 0;
    for (std::size_t r = 0; r < R_; ++r) total += b.gather_counts[r];
    works_[bi] = local_.allgatherv(TensorView(shard_out_.data() + b.shard_offset, b.shard_floats, DType::kFloat32),
                                   TensorView(gather_.data() + b.gather_offset, total, DType::kFloat32), b.gather_counts);
    wire_bytes_ += allgather_wire_bytes(4 * b.shard_floats, static_cast<int>(R_));
    collectives_ += 1;
  }
  for (std::size_t bi = 0; bi < buckets_.size(); ++bi) {
    Bucket& b = buckets_[bi];
    works_[bi]->wait();
    works_[bi].reset();
    std::size_t part = b.gather_offset;
    for (std::size_t r = 0; r < R_; ++r) {
      for (std::size_t layer : b.layers) {
        const TensorView out = outs_[layer];
        const std::size_t begin = shard_begin(layer, r), size = shard_size(layer, r);
        const float* from = gather_.data() + part + at_[layer][r];
        if (out.dtype() == DType::kFloat32) {
          std::copy_n(from, size, static_cast<float*>(out.data()) + begin);
        } else {
          kernels::narrow_from_f32(from, out.dtype(), static_cast<std::uint16_t*>(out.data()) + begin, size);
        }
      }
      part += b.gather_counts[r];
    }
  }
  in_step_ = false;
}

void HierarchicalSteps::abandon() noexcept {
  in_step_ = false;
  // Collectives still in flight complete when released (the caller aborts on such errors).
  for (WorkHandle& w : works_) w.reset();
}

}  // namespace gradcomm::detail
