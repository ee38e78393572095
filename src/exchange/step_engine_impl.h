// StepEngine's state, shared by the files that implement it (step_engine.cpp: layout,
// encode, the allreduce and allgather groups; step_engine_sparse.cpp: the sparse
// allreduce groups).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "exchange/sparse_steps.h"
#include "exchange/step_memory.h"
#include "gradcomm/step_engine.h"

namespace gradcomm {

namespace detail {

constexpr std::size_t kAlign = 8;
constexpr std::size_t align_up(std::size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// A kSparseAllreduce wire the engine can carry: a slot list of `slots` <= numel entries
// with float32 or float16 values, its bytes those of the list padded to 8.
bool sparse_wire_ok(const LayerWire& wire, std::size_t numel);

}  // namespace detail

// Wire layout of one step (docs/wire-format.md, "Exchange framing"):
// - layers are taken in backward order (the reverse of registration) and cut into groups:
//   each layer joins the open group of its collective and dtype while that group stays
//   within bucket_bytes, else it closes that group and opens the next one; the groups are
//   then put in the order in which their last layer comes, and their layers one after the
//   other, in backward order within a group (the step's order: position -> layer). So a
//   small summed layer between two compressed ones (a bias between weights) shares one
//   allreduce with the others instead of cutting the allgather in two;
// - an allreduce group is the layers' payloads (each padded to 8 bytes), then one status
//   element per layer, of the group's dtype: each rank adds 1 where its layer met a
//   non-finite value, so after the sum every rank sees how many ranks did, per layer;
// - an allgather group sends, per rank, a header of uint32 words
//   [layer count, non-finite count of each layer], padded to 8 bytes, then each layer's
//   payload padded to 8 bytes; every rank receives all ranks' blocks in rank order;
// - a sparse allreduce group holds its layers' slot lists (each padded to 8 bytes) and
//   runs 3 or 4 collectives in a row (detail::SparseAllreduceGroup), each a slot of the
//   step's schedule: every group's collectives in group order, one after the other.
//
// Layers on a CUDA device: the same bytes, written by kernels on the step's stream. The
// compressors add their non-finite counts to a device word per layer, the framing kernels
// read them, and the status words each group brings back are copied to pinned host memory
// after its collective; finish_step() waits for the stream once and evaluates them there.
// (The sparse allreduce runs on host layers only.)
struct StepEngine::Impl {
  struct Group {
    Collective collective;
    DType dtype;
    std::size_t first, last;   // positions [first, last) in the step's order
    std::size_t head, tail;    // while laying out: its first and last layer (next_member links them)
    std::size_t last_seen;     // while laying out: backward index of its last layer
    std::size_t send_offset;   // into the send arena
    std::size_t block_bytes;   // per rank
    std::size_t header_bytes;  // allgather: header size; allreduce: offset of the status elements
    std::size_t recv_offset;   // into the recv arena: allgather, and allreduce summed out of place
    std::size_t status_offset; // into the host staging of status words (device layers)
    std::size_t pending;       // layers not yet encoded
    bool issued, completed;
    std::size_t sparse;        // sparse allreduce: the group's number in `sparse`
    std::size_t first_slot;    // its first collective in `slots`
  };
  // One collective of the step: a group's, or one phase of a sparse allreduce group's.
  struct Slot {
    std::size_t group;
    std::size_t phase;
    bool issued, completed;
  };

  Device device = Device::kCpu;
  int device_index = 0;
  detail::StepMover mover;  // the step's stream, for device layers
  std::vector<std::size_t> order;            // position -> layer (this step's; see above; on a device,
                                             // order_on_device() holds a copy)
  std::vector<std::size_t> position;         // layer -> position
  std::vector<std::size_t> next_member;      // by layer, while laying out: next layer of its group
  std::vector<std::size_t> open_groups;      // while laying out: one group per collective and dtype
  std::vector<LayerWire> wire;               // this step, by layer
  std::vector<std::size_t> group_of;         // by layer
  std::vector<std::size_t> offset_in_block;  // by layer: payload offset within its block
  std::vector<TensorView> outs;              // by layer, this step
  std::vector<std::size_t> local_nonfinite;  // by layer, this rank
  std::vector<char> submitted;               // by layer
  std::vector<Group> groups;
  std::vector<Slot> slots;        // the step's collectives in the agreed order
  std::size_t next_to_issue = 0;  // into slots
  detail::SparseSteps sparse;
  std::vector<std::size_t> group_layers;  // scratch: one sparse group's layers
  bool in_step = false;
  std::int64_t step = 0;
  std::uint64_t layout_fingerprint = 0;
  detail::StepBuffer send, recv, scratch;
  std::size_t send_capacity = 0, recv_capacity = 0, status_capacity = 0;
  // float32 copies of a 16-bit layer's gradient (while it is encoded) and update (while it
  // is decoded), for the largest 16-bit layer.
  detail::StepBuffer wide_grad, wide_out;
  // Device layers: the compressors' non-finite counts and corrupt-payload words
  // ([non-finite count of layer 0, 1, ...][lowest rank with a corrupt payload, per layer]),
  // then the step's order for the framing kernels ([layer at position 0, 1, ...]); and the
  // pinned copies of the status words, of the corrupt-payload words and of the order.
  detail::StepBuffer device_words;
  detail::HostStaging status_host;
  std::size_t layer_count = 0;
  // Non-finite findings of the completed groups, for the policy at finish_step().
  std::size_t bad_layers = 0;
  std::string first_bad;
  // Ranks known to have met one: the most any fused allreduce layer counted, and the
  // ranks named by allgather headers (by rank).
  std::size_t bad_ranks_counted = 0;
  std::vector<char> bad_rank;
  std::size_t bad_ranks() const {
    return std::max<std::size_t>(bad_ranks_counted,
                                 static_cast<std::size_t>(std::count(bad_rank.begin(), bad_rank.end(), 1)));
  }
  StepStats stats;

  // Under kSkipStep a skipped step gives every payload back to its compressor
  // (on_step_skipped), so allreduce groups are summed out of place into the recv arena and
  // this rank's payloads survive the sum. Set once, from the options.
  bool sum_out_of_place = false;
  // Where an allreduce group's sum lands.
  std::byte* sum_of(const Group& g) const {
    return sum_out_of_place ? recv.at(g.recv_offset) : send.at(g.send_offset);
  }
  std::size_t allreduce_count(const Group& g) const {
    return g.header_bytes / dtype_size(g.dtype) + (g.last - g.first);
  }
  bool on_device() const { return device == Device::kCuda; }
  std::uint32_t* nonfinite_counts() const { return reinterpret_cast<std::uint32_t*>(device_words.at(0)); }
  std::uint32_t* corrupt_payloads() const {
    return reinterpret_cast<std::uint32_t*>(device_words.at(4 * layer_count));
  }
  std::uint32_t* order_on_device() const { return reinterpret_cast<std::uint32_t*>(device_words.at(8 * layer_count)); }
  float* wide(const detail::StepBuffer& buffer) const { return reinterpret_cast<float*>(buffer.at(0)); }
};

}  // namespace gradcomm
