#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/float16.h"
#include "gradcomm/mpi_communicator.h"

namespace gradcomm {
namespace {

std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, static_cast<std::size_t>(length));
}

#define GRADCOMM_MPI_CALL(call, ...)                                                          \
  do {                                                                                        \
    const int _rc = (call);                                                                   \
    GRADCOMM_CHECK(_rc == MPI_SUCCESS, ::gradcomm::ErrorCode::kCommunication, __VA_ARGS__, \
                   ": ", mpi_error_text(_rc));                                                \
  } while (0)

// MPI_Wait, or with a timeout a loop of MPI_Test that gives up with an Error naming
// `what` (the watchdog of MpiCommunicatorOptions::collective_timeout).
void wait_request(MPI_Request* request, std::chrono::milliseconds timeout, const char* what,
                  std::size_t numel, int rank) {
  if (timeout.count() <= 0) {
    GRADCOMM_MPI_CALL(MPI_Wait(request, MPI_STATUS_IGNORE), what, " of ", numel, " elements failed on rank ", rank);
    return;
  }
  const auto start = std::chrono::steady_clock::now();
  for (unsigned polls = 0;; ++polls) {
    int done = 0;
    GRADCOMM_MPI_CALL(MPI_Test(request, &done, MPI_STATUS_IGNORE), what, " of ", numel, " elements failed on rank ",
                      rank);
    if (done) return;
    if (polls % 1024 != 1023) continue;  // the clock is read rarely; MPI_Test is the progress loop
    const auto waited = std::chrono::steady_clock::now() - start;
    GRADCOMM_CHECK(waited < timeout, ErrorCode::kCommunication, what, " of ", numel, " elements on rank ", rank,
                   " did not complete within ", std::chrono::duration<double>(waited).count(),
                   " s (collective_timeout): a peer died, hangs, or stopped calling collectives");
  }
}

MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return MPI_FLOAT;
    case DType::kFloat16: case DType::kBFloat16: return MPI_UINT16_T;
    case DType::kInt32: return MPI_INT32_T;
    case DType::kUInt32: return MPI_UINT32_T;
    case DType::kUInt8: return MPI_UINT8_T;
  }
  return MPI_DATATYPE_NULL;
}

int checked_count(std::size_t count, const char* what, int rank) {
  GRADCOMM_CHECK(count <= static_cast<std::size_t>(INT_MAX), ErrorCode::kUnsupported, what,
                 " on rank ", rank, ": ", count, " elements exceed MPI's int count");
  return static_cast<int>(count);
}

template <float (*ToFloat)(std::uint16_t), std::uint16_t (*FromFloat)(float), typename Combine>
void reduce_16bit(void* in, void* inout, int* len, Combine combine) {
  auto* a = static_cast<const std::uint16_t*>(in);
  auto* b = static_cast<std::uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = FromFloat(combine(ToFloat(a[i]), ToFloat(b[i])));
}

void half_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<half_to_float, float_to_half>(in, inout, len, std::plus<float>());
}
void half_max(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<half_to_float, float_to_half>(
      in, inout, len, [](float x, float y) { return std::max(x, y); });
}
void half_min(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<half_to_float, float_to_half>(
      in, inout, len, [](float x, float y) { return std::min(x, y); });
}
void bfloat_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<bfloat16_to_float, float_to_bfloat16>(in, inout, len, std::plus<float>());
}
void bfloat_max(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<bfloat16_to_float, float_to_bfloat16>(in, inout, len,
                                             [](float x, float y) { return std::max(x, y); });
}
void bfloat_min(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<bfloat16_to_float, float_to_bfloat16>(in, inout, len,
                                             [](float x, float y) { return std::min(x, y); });
}

}  // namespace

// Work objects are pooled per communicator, so a step of many collectives allocates
// nothing once the pool has grown to the number in flight at a time.
//
// Floating-point sums run as a ring (reduce-scatter, then allgather) over point-to-point
// messages on a communicator of their own: each chunk is summed once, along a fixed path,
// and then copied to every rank, so every rank gets bitwise the same result, and each
// rank sends and receives 2(p-1)/p of the buffer (Open MPI's non-blocking reduce-scatter
// funnels the data towards rank 0 instead: docs/benchmarks.md). A ring step can only be
// posted once the previous one has arrived, so whichever handle is tested or waited,
// every ring in flight is advanced: ranks that wait on different rings never deadlock.
class MpiCommunicator::PooledWork final : public Work {
 public:
  const char* what = "";
  std::size_t numel = 0;  // for messages
  MPI_Request request = MPI_REQUEST_NULL;  // a one-call collective
  // Ring allreduce.
  bool ring = false;
  int ring_step = 0;   // steps completed; 2(p-1) in all
  int ring_steps = 0;
  int tag = 0;
  MPI_Op op = MPI_OP_NULL;
  MPI_Request ring_requests[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
  std::vector<int> counts, displs;    // the chunks, by element; MPI reads them while in flight
  std::vector<std::byte> incoming;    // one chunk received before it is added in
  MPI_Datatype type = MPI_DATATYPE_NULL;
  char* base = nullptr;
  std::size_t esize = 0;
  std::shared_ptr<WorkPool> pool;  // set while handed out, reset in the free list

  bool complete() const { return ring ? ring_step == ring_steps : request == MPI_REQUEST_NULL; }
  void wait() override;
  bool test() override;
  void release() noexcept override;
};

struct MpiCommunicator::WorkPool {
  int rank = 0;
  int size = 1;
  std::chrono::milliseconds timeout{0};  // MpiCommunicatorOptions::collective_timeout
  MPI_Comm stage2 = MPI_COMM_NULL;       // the rings' point-to-point traffic
  std::vector<PooledWork*> free;
  // Ring works keep their chunk buffer, grown to the largest chunk any ring has needed by
  // the time they come back, so a steady sequence of steps allocates nothing.
  std::vector<PooledWork*> free_rings;
  std::size_t largest_incoming = 0;
  std::vector<PooledWork*> rings;  // in flight, in issue order
  int next_tag = 0;

  ~WorkPool() {
    for (PooledWork* w : free) delete w;
    for (PooledWork* w : free_rings) delete w;
  }

  static PooledWork* acquire(const std::shared_ptr<WorkPool>& self, const char* what, std::size_t numel,
                             bool for_ring = false) {
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

  int chunk(int offset) const { return ((rank + offset) % size + size) % size; }

  // Posts the receive from the left and the send to the right of step w.ring_step.
  void post_ring_step(PooledWork& w) {
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

  // Advances w as far as it goes without blocking.
  void progress(PooledWork& w) {
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

  // Advances every ring in flight, in issue order, and forgets the finished ones.
  void progress_rings() {
    for (PooledWork* w : rings) progress(*w);
    std::erase_if(rings, [](const PooledWork* w) { return w->complete(); });
  }

  void forget(const PooledWork* w) { std::erase(rings, w); }
};

void MpiCommunicator::PooledWork::wait() {
  if (!ring) {
    wait_request(&request, pool->timeout, what, numel, pool->rank);
    return;
  }
  const auto start = std::chrono::steady_clock::now();
  for (unsigned polls = 0; !complete(); ++polls) {
    pool->progress_rings();
    if (pool->timeout.count() <= 0 || polls % 1024 != 1023) continue;  // MPI_Testall is the progress loop
    const auto waited = std::chrono::steady_clock::now() - start;
    GRADCOMM_CHECK(waited < pool->timeout, ErrorCode::kCommunication, what, " of ", numel, " elements on rank ",
                   pool->rank, " did not complete within ", std::chrono::duration<double>(waited).count(),
                   " s (collective_timeout): a peer died, hangs, or stopped calling collectives");
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


MpiCommunicator::MpiCommunicator(MPI_Comm comm, MpiCommunicatorOptions options) : options_(options) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  GRADCOMM_CHECK(initialized, ErrorCode::kInvalidArgument,
                 "MpiCommunicator(MPI_Comm): MPI is not initialized; call MPI_Init first or use "
                 "MpiCommunicator() which initializes it");
  init_from(comm);
}

MpiCommunicator::MpiCommunicator(MpiCommunicatorOptions options) : options_(options) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
    GRADCOMM_CHECK(rc == MPI_SUCCESS, ErrorCode::kCommunication, "MPI_Init_thread failed: ",
                   mpi_error_text(rc));
    finalize_on_destroy_ = true;
  }
  init_from(MPI_COMM_WORLD);
}

void MpiCommunicator::init_from(MPI_Comm comm) {
  GRADCOMM_MPI_CALL(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup of the user's communicator");
  // Failures come back as codes (turned into gradcomm::Error) instead of aborting the job.
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  GRADCOMM_MPI_CALL(MPI_Comm_dup(comm_, &stage2_comm_), "MPI_Comm_dup for two-stage collectives");
  MPI_Comm_set_errhandler(stage2_comm_, MPI_ERRORS_RETURN);
  pool_ = std::make_shared<WorkPool>();
  pool_->rank = rank_;
  pool_->size = size_;
  GRADCOMM_CHECK_ARG(options_.collective_timeout.count() >= 0, "MpiCommunicator: collective_timeout ",
                     options_.collective_timeout.count(), " ms < 0");
  pool_->timeout = options_.collective_timeout;
  pool_->stage2 = stage2_comm_;
  MPI_Op_create(&half_sum, 1, &half_sum_);
  MPI_Op_create(&half_max, 1, &half_max_);
  MPI_Op_create(&half_min, 1, &half_min_);
  MPI_Op_create(&bfloat_sum, 1, &bfloat_sum_);
  MPI_Op_create(&bfloat_max, 1, &bfloat_max_);
  MPI_Op_create(&bfloat_min, 1, &bfloat_min_);
}

void MpiCommunicator::release() noexcept {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  for (MPI_Op* op : {&half_sum_, &half_max_, &half_min_, &bfloat_sum_, &bfloat_max_, &bfloat_min_}) {
    if (*op != MPI_OP_NULL) MPI_Op_free(op);
  }
  if (pool_) pool_->progress_rings();
  if (stage2_comm_ != MPI_COMM_NULL) MPI_Comm_free(&stage2_comm_);
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  if (finalize_on_destroy_) MPI_Finalize();
}

MpiCommunicator::~MpiCommunicator() { release(); }

WorkHandle MpiCommunicator::single_request(const char* what, std::size_t numel, MPI_Request request) {
  PooledWork* w = WorkPool::acquire(pool_, what, numel);
  w->request = request;
  return WorkHandle(w);
}

std::string MpiCommunicator::describe() const {
  return "MpiCommunicator(rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ")";
}

void MpiCommunicator::verify_same_size(const char* collective, std::size_t numel, int extra) {
  if (!options_.verify_sizes || size_ == 1) return;
  // max of (x) and max of (-x) give max and min in one call.
  long long local[4] = {static_cast<long long>(numel), -static_cast<long long>(numel), extra, -extra};
  long long global[4];
  GRADCOMM_MPI_CALL(MPI_Allreduce(local, global, 4, MPI_LONG_LONG, MPI_MAX, comm_),
                    collective, " size agreement on rank ", rank_);
  GRADCOMM_CHECK(global[0] == -global[1] && global[2] == -global[3], ErrorCode::kSizeMismatch,
                 collective, " on rank ", rank_, " of ", size_, ": this rank passes ", numel,
                 " elements, others pass between ", -global[1], " and ", global[0],
                 (global[2] != -global[3] ? " (and the roots or dtypes differ)" : ""));
}

WorkHandle MpiCommunicator::allreduce(TensorView send, TensorView recv, ReduceOp op) {
  check_allreduce(send, recv);
  verify_same_size("allreduce", send.numel(), static_cast<int>(send.dtype()) * 4 + static_cast<int>(op));
  const int count = checked_count(send.numel(), "allreduce", rank_);
  const MPI_Datatype type = mpi_type(send.dtype());
  MPI_Op mpi_op = op == ReduceOp::kSum ? MPI_SUM : op == ReduceOp::kMax ? MPI_MAX : MPI_MIN;
  if (send.dtype() == DType::kFloat16) {
    mpi_op = op == ReduceOp::kSum ? half_sum_ : op == ReduceOp::kMax ? half_max_ : half_min_;
  } else if (send.dtype() == DType::kBFloat16) {
    mpi_op = op == ReduceOp::kSum ? bfloat_sum_ : op == ReduceOp::kMax ? bfloat_max_ : bfloat_min_;
  }
  count_traffic(allreduce_wire_bytes(send.nbytes(), size_));
  const bool floating = send.dtype() == DType::kFloat32 || send.dtype() == DType::kFloat16 ||
                        send.dtype() == DType::kBFloat16;
  if (!floating || op != ReduceOp::kSum || size_ == 1 || count < size_) {
    // Exact operations (integers, max, min) give the same bits on every rank whatever the
    // order; so does a sum too small to split.
    void* sendbuf = send.data() == recv.data() ? MPI_IN_PLACE : send.data();
    MPI_Request request;
    GRADCOMM_MPI_CALL(MPI_Iallreduce(sendbuf, recv.data(), count, type, mpi_op, comm_, &request),
                      "allreduce of ", recv.describe(), " on rank ", rank_);
    return single_request("allreduce", send.numel(), request);
  }
  // A floating-point sum is not associative, and MPI does not promise every rank the same
  // bits: a ring over point-to-point messages (WorkPool) sums each chunk once, then copies
  // it to every rank.
  PooledWork* w = WorkPool::acquire(pool_, "allreduce", send.numel(), /*for_ring=*/true);
  WorkHandle handle_of_w(w);
  std::size_t largest = 0;
  for (int r = 0, offset = 0; r < size_; ++r) {
    w->counts[r] = count / size_ + (r < count % size_ ? 1 : 0);
    w->displs[r] = offset;
    offset += w->counts[r];
    largest = std::max<std::size_t>(largest, static_cast<std::size_t>(w->counts[r]));
  }
  w->type = type;
  w->op = mpi_op;
  w->esize = dtype_size(send.dtype());
  w->base = static_cast<char*>(recv.data());
  pool_->largest_incoming = std::max(pool_->largest_incoming, largest * w->esize);
  if (w->incoming.size() < largest * w->esize) w->incoming.resize(pool_->largest_incoming);  // grow-only
  if (send.data() != recv.data()) std::memcpy(recv.data(), send.data(), send.nbytes());
  // The same tag sequence on every rank (collectives are issued in the same order); tags
  // keep rings in flight at the same time apart.
  w->tag = 1 + pool_->next_tag;
  pool_->next_tag = (pool_->next_tag + 1) % 30000;
  w->ring = true;
  w->ring_steps = 2 * (size_ - 1);
  pool_->post_ring_step(*w);
  pool_->rings.push_back(w);
  return handle_of_w;
}

WorkHandle MpiCommunicator::allgather(TensorView send, TensorView recv) {
  check_allgather(send, recv);
  verify_same_size("allgather", send.numel(), static_cast<int>(send.dtype()));
  const int count = checked_count(send.numel(), "allgather", rank_);
  checked_count(recv.numel(), "allgather", rank_);
  count_traffic(allgather_wire_bytes(send.nbytes(), size_));
  MPI_Request request;
  GRADCOMM_MPI_CALL(MPI_Iallgather(send.data(), count, mpi_type(send.dtype()), recv.data(), count,
                                   mpi_type(recv.dtype()), comm_, &request),
                    "allgather of ", send.describe(), " per rank on rank ", rank_);
  return single_request("allgather", send.numel(), request);
}

WorkHandle MpiCommunicator::allgatherv(TensorView send, TensorView recv,
                                       std::span<const std::size_t> counts) {
  check_allgatherv(send, recv, counts);
  verify_same_size("allgatherv", recv.numel(), static_cast<int>(send.dtype()));
  PooledWork* w = WorkPool::acquire(pool_, "allgatherv", recv.numel());
  WorkHandle handle_of_w(w);
  w->counts.resize(counts.size());
  w->displs.resize(counts.size());
  std::size_t offset = 0;
  for (std::size_t r = 0; r < counts.size(); ++r) {
    w->counts[r] = checked_count(counts[r], "allgatherv", rank_);
    w->displs[r] = checked_count(offset, "allgatherv", rank_);
    offset += counts[r];
  }
  count_traffic(send.nbytes() * static_cast<std::uint64_t>(size_ - 1));
  GRADCOMM_MPI_CALL(MPI_Iallgatherv(send.data(), static_cast<int>(send.numel()), mpi_type(send.dtype()),
                                    recv.data(), w->counts.data(), w->displs.data(),
                                    mpi_type(recv.dtype()), comm_, &w->request),
                    "allgatherv of ", send.describe(), " on rank ", rank_);
  return handle_of_w;
}

WorkHandle MpiCommunicator::alltoall(TensorView send, TensorView recv) {
  check_alltoall(send, recv);
  verify_same_size("alltoall", send.numel(), static_cast<int>(send.dtype()));
  const int count = checked_count(send.numel() / static_cast<std::size_t>(size_), "alltoall", rank_);
  count_traffic(alltoall_wire_bytes(send.nbytes(), size_));
  MPI_Request request;
  GRADCOMM_MPI_CALL(MPI_Ialltoall(send.data(), count, mpi_type(send.dtype()), recv.data(), count,
                                  mpi_type(recv.dtype()), comm_, &request),
                    "alltoall of ", send.describe(), " on rank ", rank_);
  return single_request("alltoall", send.numel(), request);
}

WorkHandle MpiCommunicator::broadcast(TensorView buffer, int root) {
  check_broadcast(buffer, root);
  verify_same_size("broadcast", buffer.numel(), root * 8 + static_cast<int>(buffer.dtype()));
  const int count = checked_count(buffer.numel(), "broadcast", rank_);
  if (rank_ == root) count_traffic(buffer.nbytes());
  MPI_Request request;
  GRADCOMM_MPI_CALL(MPI_Ibcast(buffer.data(), count, mpi_type(buffer.dtype()), root, comm_, &request),
                    "broadcast of ", buffer.describe(), " from root ", root, " on rank ", rank_);
  return single_request("broadcast", buffer.numel(), request);
}

WorkHandle MpiCommunicator::barrier() {
  MPI_Request request;
  GRADCOMM_MPI_CALL(MPI_Ibarrier(comm_, &request), "barrier on rank ", rank_);
  return single_request("barrier", 0, request);
}

void MpiCommunicator::abort(const std::string& reason) {
  std::fprintf(stderr, "gradcomm: rank %d aborts the MPI job: %s\n", rank_, reason.c_str());
  std::fflush(stderr);
  MPI_Abort(comm_, 1);
}

}  // namespace gradcomm
