// Floating-point sums run as a ring (reduce-scatter, then allgather) over point-to-point
// messages on a communicator of their own: each chunk is summed once, along a fixed path,
// and then copied to every rank, so every rank gets bitwise the same result, and each
// rank sends and receives 2(p-1)/p of the buffer (Open MPI's non-blocking reduce-scatter
// funnels the data towards rank 0 instead: docs/benchmarks.md). A ring step can only be
// posted once the previous one has arrived, so whichever handle is tested or waited,
// every ring in flight is advanced: ranks that wait on different rings never deadlock.
#include <algorithm>
#include <cstring>
#include <string>

#include "comm/mpi/mpi_call.h"
#include "comm/mpi/work_pool.h"

namespace gradcomm {

WorkHandle MpiCommunicator::WorkPool::start_ring(const std::shared_ptr<WorkPool>& self, TensorView send,
                                                 TensorView recv, int count, MPI_Datatype type, MPI_Op op) {
  PooledWork* w = acquire(self, "allreduce", send.numel(), /*for_ring=*/true);
  WorkHandle handle_of_w(w);
  const int size = self->size;
  std::size_t largest = 0;
  for (int r = 0, offset = 0; r < size; ++r) {
    w->counts[r] = count / size + (r < count % size ? 1 : 0);
    w->displs[r] = offset;
    offset += w->counts[r];
    largest = std::max<std::size_t>(largest, static_cast<std::size_t>(w->counts[r]));
  }
  w->type = type;
  w->op = op;
  w->esize = dtype_size(send.dtype());
  w->base = static_cast<char*>(recv.data());
  self->largest_incoming = std::max(self->largest_incoming, largest * w->esize);
  if (w->incoming.size() < largest * w->esize) w->incoming.resize(self->largest_incoming);  // grow-only
  if (send.data() != recv.data()) std::memcpy(recv.data(), send.data(), send.nbytes());
  // The same tag sequence on every rank (collectives are issued in the same order); tags
  // keep rings in flight at the same time apart.
  w->tag = 1 + self->next_tag;
  self->next_tag = (self->next_tag + 1) % 30000;
  w->ring = true;
  w->ring_steps = 2 * (size - 1);
  self->post_ring_step(*w);
  self->rings.push_back(w);
  return handle_of_w;
}

int MpiCommunicator::WorkPool::chunk(int offset) const { return ((rank + offset) % size + size) % size; }

void MpiCommunicator::WorkPool::post_ring_step(PooledWork& w) {
  const int s = w.ring_step, left = (rank - 1 + size) % size, right = (rank + 1) % size;
  int send_chunk, recv_chunk;
  void* recv_into;
  if (s < size - 1) {  // reduce-scatter: pass on the partial sum of one chunk
    send_chunk = chunk(-s);
    recv_chunk = chunk(-s - 1);
    recv_into = w.incoming.data();
  } else {  // allgather: pass on a finished chunk
    const int t = s - (size - 1);
    send_chunk = chunk(1 - t);
    recv_chunk = chunk(-t);
    recv_into = w.base + static_cast<std::size_t>(w.displs[recv_chunk]) * w.esize;
  }
  GRADCOMM_MPI_CALL(MPI_Irecv(recv_into, w.counts[recv_chunk], w.type, left, w.tag,
                              stage2, &w.ring_requests[0]),
                    w.what, " (ring step ", s, ") of ", w.numel, " elements on rank ", rank);
  GRADCOMM_MPI_CALL(MPI_Isend(w.base + static_cast<std::size_t>(w.displs[send_chunk]) * w.esize,
                              w.counts[send_chunk], w.type, right, w.tag, stage2, &w.ring_requests[1]),
                    w.what, " (ring step ", s, ") of ", w.numel, " elements on rank ", rank);
}

void MpiCommunicator::WorkPool::progress(PooledWork& w) {
  while (w.ring_step < w.ring_steps) {
    int done = 0;
    GRADCOMM_MPI_CALL(MPI_Testall(2, w.ring_requests, &done, MPI_STATUSES_IGNORE), w.what, " (ring step ",
                      w.ring_step, ") of ", w.numel, " elements failed on rank ", rank);
    if (!done) return;
    if (w.ring_step < size - 1) {
      const int c = chunk(-w.ring_step - 1);
      GRADCOMM_MPI_CALL(MPI_Reduce_local(w.incoming.data(), w.base + static_cast<std::size_t>(w.displs[c]) * w.esize,
                                         w.counts[c], w.type, w.op),
                        w.what, " (ring reduction) on rank ", rank);
    }
    if (++w.ring_step < w.ring_steps) post_ring_step(w);
  }
}

void MpiCommunicator::WorkPool::progress_rings() {
  for (PooledWork* w : rings) progress(*w);
  std::erase_if(rings, [](const PooledWork* w) { return w->complete(); });
}

std::string MpiCommunicator::WorkPool::ring_waits_for(const PooledWork& w) const {
  const int left = (rank - 1 + size) % size, right = (rank + 1) % size;
  int received = 0, sent = 0;
  MPI_Request_get_status(w.ring_requests[0], &received, MPI_STATUS_IGNORE);
  MPI_Request_get_status(w.ring_requests[1], &sent, MPI_STATUS_IGNORE);
  const std::string step = "ring step " + std::to_string(w.ring_step + 1) + " of " + std::to_string(w.ring_steps);
  if (!received) {
    // A stopped rank stalls the whole ring behind it: the left neighbour may be waiting too.
    return "it waits for " + step + " from rank " + std::to_string(left) + ", its left neighbour (rank " +
           std::to_string(left) + ", or a rank before it in the ring, died, hangs, or stopped calling collectives)";
  }
  if (!sent) {
    return "rank " + std::to_string(right) + ", its right neighbour, has not taken " + step +
           " (it died, hangs, or stopped calling collectives)";
  }
  return "a peer died, hangs, or stopped calling collectives";
}

}  // namespace gradcomm
