#include <algorithm>
#include <bit>
#include <chrono>
#include <climits>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "gradcomm/mpi_communicator.h"
#include "kernels/cpu/fp16.h"

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

// bfloat16 is the top half of a float32; round to nearest even.
inline float bf16_to_float(std::uint16_t v) { return std::bit_cast<float>(std::uint32_t{v} << 16); }
inline std::uint16_t float_to_bf16(float f) {
  std::uint32_t bits = std::bit_cast<std::uint32_t>(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>(bits >> 16);
}

template <float (*ToFloat)(std::uint16_t), std::uint16_t (*FromFloat)(float), typename Combine>
void reduce_16bit(void* in, void* inout, int* len, Combine combine) {
  auto* a = static_cast<const std::uint16_t*>(in);
  auto* b = static_cast<std::uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = FromFloat(combine(ToFloat(a[i]), ToFloat(b[i])));
}

void half_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<kernels::half_to_float, kernels::float_to_half>(in, inout, len, std::plus<float>());
}
void half_max(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<kernels::half_to_float, kernels::float_to_half>(
      in, inout, len, [](float x, float y) { return std::max(x, y); });
}
void half_min(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<kernels::half_to_float, kernels::float_to_half>(
      in, inout, len, [](float x, float y) { return std::min(x, y); });
}
void bfloat_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<bf16_to_float, float_to_bf16>(in, inout, len, std::plus<float>());
}
void bfloat_max(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<bf16_to_float, float_to_bf16>(in, inout, len,
                                             [](float x, float y) { return std::max(x, y); });
}
void bfloat_min(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<bf16_to_float, float_to_bf16>(in, inout, len,
                                             [](float x, float y) { return std::min(x, y); });
}

}  // namespace

// Work objects are pooled per communicator, so a step of many collectives allocates
// nothing once the pool has grown to the number in flight at a time.
//
// Two-stage collectives (reduce-scatter, then allgather) need their second stage started
// after the first completes, and MPI needs collectives started in the same order on every
// rank. Second stages therefore run on a communicator of their own and start strictly in
// the order their first stages were issued: whichever handle is tested or waited, the
// queue of pending chains is advanced from its front.
class MpiCommunicator::PooledWork final : public Work {
 public:
  const char* what = "";
  std::size_t numel = 0;  // for messages
  MPI_Request request = MPI_REQUEST_NULL;  // the only stage, or the first
  // Two-stage allreduce.
  bool chained = false;
  bool second_started = false;
  MPI_Request second = MPI_REQUEST_NULL;
  std::vector<int> counts, displs;  // MPI reads these until the request completes
  MPI_Datatype type = MPI_DATATYPE_NULL;
  char* recv_base = nullptr;
  char* own_chunk = nullptr;
  std::size_t esize = 0;
  bool in_place = false;
  std::shared_ptr<WorkPool> pool;  // set while handed out, reset in the free list

  void wait() override;
  bool test() override;
  void release() noexcept override;
};

struct MpiCommunicator::WorkPool {
  int rank = 0;
  int size = 1;
  std::chrono::milliseconds timeout{0};  // MpiCommunicatorOptions::collective_timeout
  MPI_Comm stage2 = MPI_COMM_NULL;
  std::vector<PooledWork*> free;
  std::vector<PooledWork*> pending_chains;  // first stage issued, second not started

  ~WorkPool() {
    for (PooledWork* w : free) delete w;
  }

  static PooledWork* acquire(const std::shared_ptr<WorkPool>& self, const char* what, std::size_t numel) {
    PooledWork* w;
    if (self->free.empty()) {
      w = new PooledWork();
      // Sized now, for whichever role the object gets later: an object first used by a
      // one-stage collective and then by a two-stage allreduce must not allocate then.
      w->counts.resize(static_cast<std::size_t>(self->size));
      w->displs.resize(static_cast<std::size_t>(self->size));
    } else {
      w = self->free.back();
      self->free.pop_back();
    }
    w->what = what;
    w->numel = numel;
    w->request = MPI_REQUEST_NULL;
    w->second = MPI_REQUEST_NULL;
    w->chained = false;
    w->second_started = false;
    w->pool = self;
    return w;
  }

  void start_second(PooledWork& w) {
    // In place, MPI_Ireduce_scatter leaves this rank's chunk at the start of the buffer.
    if (w.in_place && w.displs[rank] != 0) {
      std::memmove(w.own_chunk, w.recv_base, static_cast<std::size_t>(w.counts[rank]) * w.esize);
    }
    GRADCOMM_MPI_CALL(MPI_Iallgatherv(MPI_IN_PLACE, 0, w.type, w.recv_base, w.counts.data(),
                                      w.displs.data(), w.type, stage2, &w.second),
                      w.what, " (allgather stage) of ", w.numel, " elements on rank ", rank);
    w.second_started = true;
  }

  // Starts second stages in issue order; blocks on first stages up to and including
  // `until` (nullptr: never blocks).
  void advance(const PooledWork* until) {
    bool block = until != nullptr && !until->second_started;
    std::size_t started = 0;
    for (; started < pending_chains.size(); ++started) {
      PooledWork& front = *pending_chains[started];
      if (block) {
        wait_request(&front.request, timeout, front.what, front.numel, rank);
      } else {
        int done = 0;
        GRADCOMM_MPI_CALL(MPI_Test(&front.request, &done, MPI_STATUS_IGNORE), front.what, " of ",
                          front.numel, " elements failed on rank ", rank);
        if (!done) break;
      }
      start_second(front);
      if (&front == until) block = false;
    }
    pending_chains.erase(pending_chains.begin(), pending_chains.begin() + static_cast<std::ptrdiff_t>(started));
  }
};

void MpiCommunicator::PooledWork::wait() {
  if (chained) {
    pool->advance(this);
    wait_request(&second, pool->timeout, what, numel, pool->rank);
    return;
  }
  wait_request(&request, pool->timeout, what, numel, pool->rank);
}

bool MpiCommunicator::PooledWork::test() {
  int done = 0;
  if (chained) {
    pool->advance(nullptr);
    if (!second_started) return false;
    GRADCOMM_MPI_CALL(MPI_Test(&second, &done, MPI_STATUS_IGNORE), what, " of ", numel,
                      " elements failed on rank ", pool->rank);
    return done != 0;
  }
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
  owner->free.push_back(this);
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
  if (pool_) pool_->advance(nullptr);
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
  // bits. Reduce-scatter (each chunk summed once, by its owner) then allgather gives
  // bitwise-identical results on every rank, with a ring's traffic.
  PooledWork* w = WorkPool::acquire(pool_, "allreduce", send.numel());
  WorkHandle handle_of_w(w);
  w->counts.resize(static_cast<std::size_t>(size_));
  w->displs.resize(static_cast<std::size_t>(size_));
  for (int r = 0, offset = 0; r < size_; ++r) {
    w->counts[r] = count / size_ + (r < count % size_ ? 1 : 0);
    w->displs[r] = offset;
    offset += w->counts[r];
  }
  w->type = type;
  w->esize = dtype_size(send.dtype());
  w->recv_base = static_cast<char*>(recv.data());
  w->own_chunk = w->recv_base + static_cast<std::size_t>(w->displs[rank_]) * w->esize;
  w->in_place = send.data() == recv.data();
  GRADCOMM_MPI_CALL(MPI_Ireduce_scatter(w->in_place ? MPI_IN_PLACE : send.data(),
                                        w->in_place ? w->recv_base : w->own_chunk, w->counts.data(),
                                        type, mpi_op, comm_, &w->request),
                    "allreduce (reduce-scatter stage) of ", recv.describe(), " on rank ", rank_);
  w->chained = true;
  pool_->pending_chains.push_back(w);
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
