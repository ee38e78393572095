// MpiCommunicator: setup and teardown, and each collective as one non-blocking MPI call,
// except floating-point sums, which run as a ring (ring.cpp).
#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <thread>

#include "comm/mpi/mpi_call.h"
#include "comm/mpi/reduce_16bit.h"
#include "comm/mpi/work_pool.h"
#include "core/last_error.h"
#include "gradcomm/mpi_communicator.h"

namespace gradcomm {
namespace {

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

}  // namespace

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
                   detail::mpi_error_text(rc));
    finalize_on_destroy_ = true;
  }
  init_from(MPI_COMM_WORLD);
}

void MpiCommunicator::init_from(MPI_Comm comm) {
  uncaught_at_construction_ = std::uncaught_exceptions();
  GRADCOMM_MPI_CALL(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup of the user's communicator");
  // Failures come back as codes (turned into gradcomm::Error) instead of aborting the job.
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  GRADCOMM_MPI_CALL(MPI_Comm_dup(comm_, &stage2_comm_), "MPI_Comm_dup for two-stage collectives");
  MPI_Comm_set_errhandler(stage2_comm_, MPI_ERRORS_RETURN);
  // The teardown barrier's own: it must never match a collective a peer waits in.
  GRADCOMM_MPI_CALL(MPI_Comm_dup(comm_, &farewell_comm_), "MPI_Comm_dup for the teardown");
  MPI_Comm_set_errhandler(farewell_comm_, MPI_ERRORS_RETURN);
  pool_ = std::make_shared<WorkPool>();
  pool_->rank = rank_;
  pool_->size = size_;
  GRADCOMM_CHECK_ARG(options_.collective_timeout.count() >= 0, "MpiCommunicator: collective_timeout ",
                     options_.collective_timeout.count(), " ms < 0");
  GRADCOMM_CHECK_ARG(options_.teardown_grace.count() >= 0, "MpiCommunicator: teardown_grace ",
                     options_.teardown_grace.count(), " ms < 0");
  pool_->timeout = options_.collective_timeout;
  pool_->stage2 = stage2_comm_;
  MPI_Op_create(&detail::half_sum, 1, &half_sum_);
  MPI_Op_create(&detail::half_max, 1, &half_max_);
  MPI_Op_create(&detail::half_min, 1, &half_min_);
  MPI_Op_create(&detail::bfloat_sum, 1, &bfloat_sum_);
  MPI_Op_create(&detail::bfloat_max, 1, &bfloat_max_);
  MPI_Op_create(&detail::bfloat_min, 1, &bfloat_min_);
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
  if (farewell_comm_ != MPI_COMM_NULL) MPI_Comm_free(&farewell_comm_);
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  if (finalize_on_destroy_) MPI_Finalize();
}

bool MpiCommunicator::meet_at_teardown() noexcept {
  MPI_Request request = MPI_REQUEST_NULL;
  if (MPI_Ibarrier(farewell_comm_, &request) != MPI_SUCCESS) return false;
  const auto deadline = std::chrono::steady_clock::now() + options_.teardown_grace;
  for (;;) {
    int done = 0;
    if (MPI_Test(&request, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) return false;
    if (done) return true;
    if (std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  // Never completed: the communicator cannot be freed with the barrier pending in it.
  farewell_comm_ = MPI_COMM_NULL;
  return false;
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && size_ > 1 && !meet_at_teardown() &&
      std::uncaught_exceptions() > uncaught_at_construction_) {
    // An exception unwinds past this communicator and the other ranks did not come to its
    // teardown: they wait for this rank in a collective, and finalizing would hang them.
    std::string text = "gradcomm: rank " + std::to_string(rank_) + " of " + std::to_string(size_) +
                       ": an exception is unwinding past MpiCommunicator";
    const std::string& last = detail::last_error_on_this_thread();
    if (!last.empty()) text += " (the last gradcomm error on this thread: " + last + ")";
    text += "; the other ranks did not reach its teardown within teardown_grace (they wait for this one): "
            "aborting the MPI job";
    std::fprintf(stderr, "%s\n", text.c_str());
    std::fflush(stderr);
    MPI_Abort(comm_, 1);
  }
  release();
}

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
  if (on_cuda(send, recv)) {
    WorkHandle staged = stage({&send}, {&recv});
    return finish_staging(std::move(staged), allreduce(send, recv, op));
  }
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
  // bits: a ring over point-to-point messages (ring.cpp) sums each chunk once, then copies
  // it to every rank.
  return WorkPool::start_ring(pool_, send, recv, count, type, mpi_op);
}

WorkHandle MpiCommunicator::allgather(TensorView send, TensorView recv) {
  check_allgather(send, recv);
  if (on_cuda(send, recv)) {
    WorkHandle staged = stage({&send}, {&recv});
    return finish_staging(std::move(staged), allgather(send, recv));
  }
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
  if (on_cuda(send, recv)) {
    WorkHandle staged = stage({&send}, {&recv});
    return finish_staging(std::move(staged), allgatherv(send, recv, counts));
  }
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
  if (on_cuda(send, recv)) {
    WorkHandle staged = stage({&send}, {&recv});
    return finish_staging(std::move(staged), alltoall(send, recv));
  }
  verify_same_size("alltoall", send.numel(), static_cast<int>(send.dtype()));
  const int count = checked_count(send.numel() / static_cast<std::size_t>(size_), "alltoall", rank_);
  count_traffic(alltoall_wire_bytes(send.nbytes(), size_));
  MPI_Request request;
  GRADCOMM_MPI_CALL(MPI_Ialltoall(send.data(), count, mpi_type(send.dtype()), recv.data(), count,
                                  mpi_type(recv.dtype()), comm_, &request),
                    "alltoall of ", send.describe(), " on rank ", rank_);
  return single_request("alltoall", send.numel(), request);
}

WorkHandle MpiCommunicator::alltoallv(TensorView send, std::span<const std::size_t> send_counts,
                                      TensorView recv, std::span<const std::size_t> recv_counts) {
  check_alltoallv(send, send_counts, recv, recv_counts);
  if (on_cuda(send, recv)) {
    WorkHandle staged = stage({&send}, {&recv});
    return finish_staging(std::move(staged), alltoallv(send, send_counts, recv, recv_counts));
  }
  verify_same_size("alltoallv", static_cast<std::size_t>(size_), static_cast<int>(send.dtype()));
  PooledWork* w = WorkPool::acquire(pool_, "alltoallv", recv.numel());
  WorkHandle handle_of_w(w);
  const auto p = static_cast<std::size_t>(size_);
  w->counts.resize(p);
  w->displs.resize(p);
  w->send_counts.resize(p);
  w->send_displs.resize(p);
  std::size_t sent = 0, received = 0;
  for (std::size_t r = 0; r < p; ++r) {
    w->send_counts[r] = checked_count(send_counts[r], "alltoallv", rank_);
    w->send_displs[r] = checked_count(sent, "alltoallv", rank_);
    w->counts[r] = checked_count(recv_counts[r], "alltoallv", rank_);
    w->displs[r] = checked_count(received, "alltoallv", rank_);
    sent += send_counts[r];
    received += recv_counts[r];
  }
  count_traffic(alltoallv_wire_bytes(send_counts, dtype_size(send.dtype()), rank_));
  GRADCOMM_MPI_CALL(MPI_Ialltoallv(send.data(), w->send_counts.data(), w->send_displs.data(),
                                   mpi_type(send.dtype()), recv.data(), w->counts.data(),
                                   w->displs.data(), mpi_type(recv.dtype()), comm_, &w->request),
                    "alltoallv of ", send.describe(), " on rank ", rank_);
  return handle_of_w;
}

WorkHandle MpiCommunicator::broadcast(TensorView buffer, int root) {
  check_broadcast(buffer, root);
  if (on_cuda(buffer)) {
    WorkHandle staged = stage({&buffer}, {&buffer});
    return finish_staging(std::move(staged), broadcast(buffer, root));
  }
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

bool MpiCommunicator::accepts(Device device) const {
#if defined(GRADCOMM_HAVE_CUDA)
  return device == Device::kCpu || device == Device::kCuda;  // CUDA: staged (device_staging_cuda.cpp)
#else
  return device == Device::kCpu;
#endif
}

#if !defined(GRADCOMM_HAVE_CUDA)
void MpiCommunicator::set_cuda_stream(void*, int) {
  GRADCOMM_THROW(ErrorCode::kUnsupported, "MpiCommunicator::set_cuda_stream on rank ", rank_,
                 ": gradcomm was built without CUDA");
}
// Unreachable: accepts() refuses CUDA buffers before a collective could stage them.
WorkHandle MpiCommunicator::stage(std::initializer_list<TensorView*>, std::initializer_list<TensorView*>) {
  GRADCOMM_THROW(ErrorCode::kInternal, "MpiCommunicator::stage without CUDA");
}
WorkHandle MpiCommunicator::finish_staging(WorkHandle, WorkHandle) {
  GRADCOMM_THROW(ErrorCode::kInternal, "MpiCommunicator::finish_staging without CUDA");
}
#endif

void MpiCommunicator::abort(const std::string& reason) {
  std::fprintf(stderr, "gradcomm: rank %d aborts the MPI job: %s\n", rank_, reason.c_str());
  std::fflush(stderr);
  MPI_Abort(comm_, 1);
}

}  // namespace gradcomm
