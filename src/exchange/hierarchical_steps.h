// HierarchicalSteps: the host-local halves of a hierarchical exchange
// (docs/algorithms/sparse-allreduce.md, "Hierarchical"). Each of the R ranks of a host owns
// a 1/R shard of every layer. Per bucket of layers (backward order, up to bucket_bytes):
//   1. a dense reduce-scatter inside the host (an alltoallv of float32 shards on `local`,
//      then the sum in rank order, scaled by 1/R): this rank's shard of the host's average,
//      with the host's non-finite count of each layer, which travels with it;
//   2. the shard goes into the engine across hosts (its own StepEngine over the cross
//      communicator, driven by the caller), which compresses and exchanges it;
//   3. after that step, a dense allgather inside the host (allgatherv) of every rank's
//      averaged shard into the layer's output.
// Gradients are sanitized on the way in (non-finite elements count and become 0), so the
// host's sum is finite and every rank of every host sees the same counts per layer: the
// non-finite policy decides alike everywhere.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "exchange/engine_driver.h"
#include "gradcomm/communicator.h"
#include "gradcomm/layer.h"
#include "gradcomm/tensor.h"

namespace gradcomm::detail {

class HierarchicalSteps {
 public:
  HierarchicalSteps(Communicator& local, std::span<const LayerSpec> layers, std::size_t bucket_bytes);

  // This rank's shard of every layer (float32, named "<layer>[shard i/R]"), in the layers'
  // order: what the engine across hosts registers.
  const std::vector<LayerSpec>& shard_layers() const noexcept { return shard_specs_; }

  void begin_step();
  // Copies `grad` into its bucket (float32, sanitized) and starts every bucket whose layers
  // are all in, in bucket order. `out` gets the averaged update after gather().
  void submit(std::size_t layer, TensorView grad, TensorView out);
  void check_all_submitted() const;
  // Sums the local reduce-scatters that completed, in bucket order, and submits their
  // shards to `inner`'s engine; with `wait`, waits for all of them (every layer must have
  // been submitted).
  void forward(EngineDriver& inner, bool wait);
  // After the engine across hosts finished its step: the allgather inside the host, into
  // the outputs.
  void gather();
  void abandon() noexcept;

  std::uint64_t wire_bytes() const noexcept { return wire_bytes_; }  // this step, inside the host
  std::uint64_t collectives() const noexcept { return collectives_; }

 private:
  struct Bucket {
    std::vector<std::size_t> layers;        // in backward order
    std::vector<std::size_t> send_counts;   // floats to each local rank (its shards + statuses)
    std::vector<std::size_t> recv_counts;   // floats from each local rank (this rank's shards + statuses)
    std::vector<std::size_t> gather_counts; // floats of each rank's shards (allgatherv)
    std::size_t send_offset = 0, recv_offset = 0, gather_offset = 0, shard_offset = 0, shard_floats = 0;
    std::size_t pending = 0;
    bool issued = false, forwarded = false;
  };
  std::size_t shard_begin(std::size_t layer, std::size_t r) const;
  std::size_t shard_size(std::size_t layer, std::size_t r) const;
  void start_ready();
  void sum_bucket(std::size_t b);

  Communicator& local_;
  std::size_t R_ = 1, me_ = 0;
  std::vector<LayerSpec> specs_, shard_specs_;
  std::vector<Bucket> buckets_;
  std::vector<std::size_t> bucket_of_;        // by layer
  std::vector<std::vector<std::size_t>> at_;  // by layer and local rank: offset within the bucket's part
  std::vector<std::size_t> shard_at_;         // by layer: offset of its shard in shard_grad_/shard_out_
  std::vector<float> send_, recv_, gather_, shard_grad_, shard_out_, wide_;
  std::vector<float> host_nonfinite_;  // by layer, this step
  std::vector<TensorView> outs_;       // by layer, this step
  std::vector<char> submitted_;
  std::vector<WorkHandle> works_;      // by bucket
  std::size_t next_issue_ = 0, next_forward_ = 0;
  std::uint64_t wire_bytes_ = 0, collectives_ = 0;
  bool in_step_ = false;
};

}  // namespace gradcomm::detail
