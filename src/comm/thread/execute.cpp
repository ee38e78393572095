// What each collective moves where once every rank has called it, and the check that the
// ranks' calls agree. A reduction runs once, in rank order, into rank 0's recv buffer,
// and is then copied to the others: every rank gets the same bits.
#include <cstring>
#include <numeric>
#include <sstream>

#include "comm/reduce_buffers.h"
#include "comm/thread/group.h"

namespace gradcomm::thread_comm {
namespace {

char* at(TensorView t, std::size_t elements) {
  return static_cast<char*>(t.data()) + elements * dtype_size(t.dtype());
}

std::size_t sum_before(const std::vector<std::size_t>& counts, int end) {
  return std::accumulate(counts.begin(), counts.begin() + end, std::size_t{0});
}

// What a rank passed, in the words of the messages: "float32[1000] sum".
std::string signature(Kind kind, const Arrival& a) {
  switch (kind) {
    case Kind::kAllreduce:
      return detail::concat(a.send.describe(), " ", reduce_op_name(a.op));
    case Kind::kBroadcast:
      return detail::concat(a.send.describe(), " from root ", a.root);
    case Kind::kAllgatherv: {
      std::ostringstream out;
      out << dtype_name(a.send.dtype()) << " counts";
      for (std::size_t c : a.send_counts) out << ' ' << c;
      return out.str();
    }
    default:
      return a.send.describe();
  }
}

}  // namespace

std::string disagreement(const Slot& slot, int size) {
  const std::string where =
      detail::concat(kind_name(slot.kind), " (collective #", slot.sequence, "): ");
  if (slot.kind == Kind::kBarrier || slot.kind == Kind::kSplit) return {};
  if (slot.kind == Kind::kAlltoallv) {
    for (int r = 0; r < size; ++r) {
      const Arrival& receiver = slot.arrivals[static_cast<std::size_t>(r)];
      for (int s = 0; s < size; ++s) {
        const Arrival& sender = slot.arrivals[static_cast<std::size_t>(s)];
        const std::size_t expected = receiver.recv_counts[static_cast<std::size_t>(s)];
        const std::size_t sent = sender.send_counts[static_cast<std::size_t>(r)];
        if (sent != expected || sender.send.dtype() != receiver.send.dtype()) {
          return detail::concat(where, "rank ", s, " sends ", sent, " ",
                                dtype_name(sender.send.dtype()), " elements to rank ", r,
                                ", which expects ", expected, " ",
                                dtype_name(receiver.send.dtype()), " elements from it");
        }
      }
    }
    return {};
  }
  const std::string first = signature(slot.kind, slot.arrivals[0]);
  for (int r = 1; r < size; ++r) {
    const std::string mine = signature(slot.kind, slot.arrivals[static_cast<std::size_t>(r)]);
    if (mine != first)
      return detail::concat(where, "rank 0 passes ", first, ", rank ", r, " passes ", mine);
  }
  return {};
}

void execute(Slot& slot, Mover& m, int size) {
  const std::vector<Arrival>& a = slot.arrivals;
  const auto rank = [](int r) { return static_cast<std::size_t>(r); };
  m.begin(slot);
  switch (slot.kind) {
    case Kind::kAllreduce: {
      const TensorView acc = a[0].recv;
      const std::size_t n = acc.numel(), bytes = acc.nbytes();
      if (n == 0) break;
      if (acc.data() != a[0].send.data()) m.copy(slot, 0, acc.data(), a[0].send.data(), bytes);
      for (int r = 1; r < size; ++r)
        m.combine(slot, 0, acc.dtype(), a[0].op, acc.data(), a[rank(r)].send.data(), n);
      for (int r = 1; r < size; ++r) {
        m.handoff(slot, 0, r);
        m.copy(slot, r, a[rank(r)].recv.data(), acc.data(), bytes);
      }
      break;
    }
    case Kind::kAllgather:
      for (int r = 0; r < size; ++r) {
        for (int s = 0; s < size; ++s) {
          const TensorView send = a[rank(s)].send;
          m.copy(slot, r, at(a[rank(r)].recv, rank(s) * send.numel()), send.data(), send.nbytes());
        }
      }
      break;
    case Kind::kAllgatherv: {
      const std::vector<std::size_t>& counts = a[0].send_counts;
      for (int r = 0; r < size; ++r) {
        for (int s = 0; s < size; ++s) {
          const TensorView send = a[rank(s)].send;
          m.copy(slot, r, at(a[rank(r)].recv, sum_before(counts, s)), send.data(), send.nbytes());
        }
      }
      break;
    }
    case Kind::kAlltoall:
      for (int r = 0; r < size; ++r) {
        for (int s = 0; s < size; ++s) {
          const TensorView send = a[rank(s)].send;
          const std::size_t chunk = send.numel() / rank(size);
          m.copy(slot, r, at(a[rank(r)].recv, rank(s) * chunk), at(send, rank(r) * chunk),
                 chunk * dtype_size(send.dtype()));
        }
      }
      break;
    case Kind::kAlltoallv:
      for (int r = 0; r < size; ++r) {
        const Arrival& receiver = a[rank(r)];
        for (int s = 0; s < size; ++s) {
          const Arrival& sender = a[rank(s)];
          m.copy(slot, r, at(receiver.recv, sum_before(receiver.recv_counts, s)),
                 at(sender.send, sum_before(sender.send_counts, r)),
                 receiver.recv_counts[rank(s)] * dtype_size(sender.send.dtype()));
        }
      }
      break;
    case Kind::kBroadcast: {
      const TensorView source = a[rank(a[0].root)].send;
      for (int r = 0; r < size; ++r) {
        if (r != a[0].root) m.copy(slot, r, a[rank(r)].send.data(), source.data(), source.nbytes());
      }
      break;
    }
    case Kind::kBarrier:
    case Kind::kSplit:
      break;
  }
  m.end(slot);
}

namespace {

class HostMover final : public Mover {
 public:
  void copy(Slot&, int, void* dst, const void* src, std::size_t bytes) override {
    if (bytes > 0 && dst != src) std::memmove(dst, src, bytes);
  }
  void combine(Slot&, int, DType dtype, ReduceOp op, void* acc, const void* src,
               std::size_t n) override {
    detail::combine_buffers(dtype, op, acc, src, n);
  }
};

}  // namespace

std::unique_ptr<Mover> make_host_mover() { return std::make_unique<HostMover>(); }

}  // namespace gradcomm::thread_comm
