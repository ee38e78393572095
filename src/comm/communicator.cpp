#include "gradcomm/communicator.h"

#include <numeric>

namespace gradcomm {

const char* reduce_op_name(ReduceOp op) noexcept {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kMin: return "min";
  }
  return "unknown";
}

std::uint64_t allreduce_wire_bytes(std::uint64_t bytes, int world_size) {
  if (world_size <= 1) return 0;
  return 2 * bytes * static_cast<std::uint64_t>(world_size - 1) / static_cast<std::uint64_t>(world_size);
}

std::uint64_t allgather_wire_bytes(std::uint64_t bytes_per_rank, int world_size) {
  return world_size <= 1 ? 0 : bytes_per_rank * static_cast<std::uint64_t>(world_size - 1);
}

std::uint64_t alltoallv_wire_bytes(std::span<const std::size_t> send_counts, std::size_t element_bytes,
                                   int rank) {
  std::uint64_t bytes = 0;
  for (std::size_t r = 0; r < send_counts.size(); ++r) {
    if (static_cast<int>(r) != rank) bytes += send_counts[r] * element_bytes;
  }
  return bytes;
}

std::uint64_t alltoall_wire_bytes(std::uint64_t total_bytes, int world_size) {
  if (world_size <= 1) return 0;
  return total_bytes * static_cast<std::uint64_t>(world_size - 1) / static_cast<std::uint64_t>(world_size);
}

std::unique_ptr<Communicator> Communicator::split(int color, int key) {
  GRADCOMM_THROW(ErrorCode::kUnsupported, describe(), " cannot split (color ", color, ", key ",
                 key, "): use MpiCommunicator, NcclCommunicator or ThreadCommunicator");
}

std::unique_ptr<Communicator> Communicator::split_shared() {
  GRADCOMM_THROW(ErrorCode::kUnsupported, describe(),
                 " cannot split by host: use MpiCommunicator, NcclCommunicator or ThreadCommunicator");
}

static void check_device(const Communicator& comm, TensorView t, const char* what) {
  GRADCOMM_CHECK(comm.accepts(t.device()) || t.numel() == 0, ErrorCode::kInvalidArgument,
                 what, ": ", comm.describe(), " takes ", device_name(comm.device()),
                 " buffers, got ", t.describe(), " on rank ", comm.rank());
}

void Communicator::check_allreduce(TensorView send, TensorView recv) const {
  check_device(*this, send, "allreduce send");
  check_device(*this, recv, "allreduce recv");
  GRADCOMM_CHECK(send.numel() == recv.numel() && send.dtype() == recv.dtype(),
                 ErrorCode::kSizeMismatch, "allreduce on rank ", rank(), ": send ",
                 send.describe(), " and recv ", recv.describe(), " differ");
}

void Communicator::check_allgather(TensorView send, TensorView recv) const {
  check_device(*this, send, "allgather send");
  check_device(*this, recv, "allgather recv");
  GRADCOMM_CHECK(recv.numel() == send.numel() * static_cast<std::size_t>(size()) &&
                     send.dtype() == recv.dtype(),
                 ErrorCode::kSizeMismatch, "allgather on rank ", rank(), " of ", size(),
                 ": recv ", recv.describe(), " must hold ", size(), " x send ", send.describe());
}

void Communicator::check_allgatherv(TensorView send, TensorView recv,
                                    std::span<const std::size_t> counts) const {
  check_device(*this, send, "allgatherv send");
  check_device(*this, recv, "allgatherv recv");
  GRADCOMM_CHECK(counts.size() == static_cast<std::size_t>(size()), ErrorCode::kSizeMismatch,
                 "allgatherv on rank ", rank(), ": ", counts.size(), " counts for ", size(),
                 " ranks");
  const std::size_t total = std::accumulate(counts.begin(), counts.end(), std::size_t{0});
  GRADCOMM_CHECK(total == recv.numel() && counts[static_cast<std::size_t>(rank())] == send.numel() &&
                     send.dtype() == recv.dtype(),
                 ErrorCode::kSizeMismatch, "allgatherv on rank ", rank(), ": counts sum to ",
                 total, " and name ", counts[static_cast<std::size_t>(rank())],
                 " for this rank; recv is ", recv.describe(), ", send is ", send.describe());
}

void Communicator::check_alltoall(TensorView send, TensorView recv) const {
  check_device(*this, send, "alltoall send");
  check_device(*this, recv, "alltoall recv");
  GRADCOMM_CHECK(send.numel() == recv.numel() && send.dtype() == recv.dtype() &&
                     send.numel() % static_cast<std::size_t>(size()) == 0,
                 ErrorCode::kSizeMismatch, "alltoall on rank ", rank(), " of ", size(),
                 ": send ", send.describe(), " and recv ", recv.describe(),
                 " must match and divide by the world size");
}

void Communicator::check_alltoallv(TensorView send, std::span<const std::size_t> send_counts,
                                   TensorView recv, std::span<const std::size_t> recv_counts) const {
  check_device(*this, send, "alltoallv send");
  check_device(*this, recv, "alltoallv recv");
  const auto p = static_cast<std::size_t>(size());
  const std::size_t sent = std::accumulate(send_counts.begin(), send_counts.end(), std::size_t{0});
  const std::size_t received = std::accumulate(recv_counts.begin(), recv_counts.end(), std::size_t{0});
  GRADCOMM_CHECK(send_counts.size() == p && recv_counts.size() == p && sent == send.numel() &&
                     received == recv.numel() && send.dtype() == recv.dtype(),
                 ErrorCode::kSizeMismatch, "alltoallv on rank ", rank(), " of ", size(), ": ",
                 send_counts.size(), " send counts summing to ", sent, " for send ", send.describe(),
                 ", ", recv_counts.size(), " receive counts summing to ", received, " for recv ",
                 recv.describe());
  GRADCOMM_CHECK(recv_counts[static_cast<std::size_t>(rank())] == send_counts[static_cast<std::size_t>(rank())],
                 ErrorCode::kSizeMismatch, "alltoallv on rank ", rank(), ": this rank sends itself ",
                 send_counts[static_cast<std::size_t>(rank())], " elements but expects ",
                 recv_counts[static_cast<std::size_t>(rank())]);
}

void Communicator::check_broadcast(TensorView buffer, int root) const {
  check_device(*this, buffer, "broadcast buffer");
  GRADCOMM_CHECK(root >= 0 && root < size(), ErrorCode::kInvalidArgument, "broadcast root ",
                 root, " outside [0, ", size(), ")");
}

}  // namespace gradcomm
