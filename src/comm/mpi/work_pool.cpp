#include "comm/mpi/work_pool.h"

#include "comm/mpi/mpi_call.h"
#include "comm/mpi/watchdog.h"

namespace gradcomm {

MpiCommunicator::WorkPool::~WorkPool() {
  for (PooledWork* w : free) delete w;
  for (PooledWork* w : free_rings) delete w;
}

MpiCommunicator::PooledWork* MpiCommunicator::WorkPool::acquire(const std::shared_ptr<WorkPool>& self,
                                                                const char* what, std::size_t numel,
                                                                bool for_ring) {
  std::vector<PooledWork*>& list = for_ring ? self->free_rings : self->free;
  PooledWork* w;
  if (list.empty()) {
    w = new PooledWork();
    // Sized now, for whichever role the object gets later: an object first used by a
    // one-call collective and then by a ring must not allocate then.
    w->counts.resize(static_cast<std::size_t>(self->size));
    w->displs.resize(static_cast<std::size_t>(self->size));
  } else {
    w = list.back();
    list.pop_back();
  }
  w->what = what;
  w->numel = numel;
  w->request = MPI_REQUEST_NULL;
  w->ring = false;
  w->ring_step = w->ring_steps = 0;
  w->ring_requests[0] = w->ring_requests[1] = MPI_REQUEST_NULL;
  w->pool = self;
  return w;
}

void MpiCommunicator::WorkPool::forget(const PooledWork* w) { std::erase(rings, w); }

void MpiCommunicator::PooledWork::wait() {
  if (!ring) {
    detail::wait_request(&request, pool->timeout, what, numel, pool->rank);
    return;
  }
  const detail::Watchdog watchdog(pool->timeout, what, numel, pool->rank);
  for (unsigned polls = 0; !complete(); ++polls) {
    pool->progress_rings();  // MPI_Testall is the progress loop
    if (!complete() && watchdog.expired(polls)) watchdog.fail(pool->ring_waits_for(*this));
  }
}

bool MpiCommunicator::PooledWork::test() {
  if (ring) {
    pool->progress_rings();
    return complete();
  }
  int done = 0;
  GRADCOMM_MPI_CALL(MPI_Test(&request, &done, MPI_STATUS_IGNORE), what, " of ", numel,
                    " elements failed on rank ", pool->rank);
  return done != 0;
}

void MpiCommunicator::PooledWork::release() noexcept {
  // A handle dropped without wait(): complete it, so buffers are not written later.
  try {
    wait();
  } catch (...) {
  }
  std::shared_ptr<WorkPool> owner = std::move(pool);
  owner->forget(this);
  if (!ring) {
    owner->free.push_back(this);
    return;
  }
  try {
    if (incoming.size() < owner->largest_incoming) incoming.resize(owner->largest_incoming);
  } catch (...) {  // out of memory: the next ring that needs it grows it instead
  }
  owner->free_rings.push_back(this);
}

}  // namespace gradcomm
