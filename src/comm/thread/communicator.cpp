// ThreadCommunicator: each collective checks its arguments on the calling rank, counts
// its traffic like MpiCommunicator's, and joins the group's rendezvous (group.cpp).
#include <exception>
#include <mutex>
#include <thread>

#include "comm/thread/group.h"

namespace gradcomm {

using thread_comm::Call;
using thread_comm::Kind;

std::vector<std::unique_ptr<ThreadCommunicator>> ThreadCommunicator::create(
    int size, ThreadCommunicatorOptions options) {
  GRADCOMM_CHECK_ARG(size >= 1, "ThreadCommunicator::create: size ", size, " < 1");
  GRADCOMM_CHECK_ARG(options.collective_timeout.count() >= 0,
                     "ThreadCommunicator: collective_timeout ", options.collective_timeout.count(),
                     " ms < 0");
  GRADCOMM_CHECK_ARG(options.ranks_per_host >= 0, "ThreadCommunicator: ranks_per_host ",
                     options.ranks_per_host, " < 0");
  GRADCOMM_CHECK_ARG(
      options.streams.empty() || options.streams.size() == static_cast<std::size_t>(size),
      "ThreadCommunicator: ", options.streams.size(), " streams for ", size, " ranks");
  GRADCOMM_CHECK_ARG(options.streams.empty() || options.device == Device::kCuda,
                     "ThreadCommunicator: streams are for Device::kCuda");
  std::vector<int> hosts(static_cast<std::size_t>(size));
  for (int r = 0; r < size; ++r)
    hosts[static_cast<std::size_t>(r)] = options.ranks_per_host ? r / options.ranks_per_host : 0;
  auto family = std::make_shared<thread_comm::Family>();
  auto group = std::make_shared<Group>(size, std::move(options), std::move(hosts), family);
  family->groups.push_back(group);
  std::vector<std::unique_ptr<ThreadCommunicator>> ranks;
  for (int r = 0; r < size; ++r)
    ranks.push_back(std::unique_ptr<ThreadCommunicator>(new ThreadCommunicator(group, r)));
  return ranks;
}

void ThreadCommunicator::run(int size, const std::function<void(ThreadCommunicator&)>& body,
                             ThreadCommunicatorOptions options) {
  auto ranks = create(size, std::move(options));
  std::mutex mutex;
  std::exception_ptr first;
  std::vector<std::thread> threads;
  auto join_all = [&] {
    for (std::thread& t : threads) t.join();
  };
  for (int r = 0; r < size; ++r) {
    auto rank_body = [&, r] {
      ThreadCommunicator& comm = *ranks[static_cast<std::size_t>(r)];
      try {
        body(comm);
      } catch (...) {
        std::string what = "an exception that is not a std::exception";
        try {
          throw;
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        {
          std::lock_guard<std::mutex> lock(mutex);
          if (!first) first = std::current_exception();
        }
        comm.abort(what);  // the others end with an Error instead of waiting for this rank
      }
    };
    try {
      threads.emplace_back(rank_body);
    } catch (...) {  // no thread for this rank: the started ones must not wait for it
      ranks[0]->abort("ThreadCommunicator::run could not start the thread of rank " +
                      std::to_string(r));
      join_all();
      throw;
    }
  }
  join_all();
  if (first) std::rethrow_exception(first);
}

ThreadCommunicator::ThreadCommunicator(std::shared_ptr<Group> group, int rank)
    : group_(std::move(group)), rank_(rank) {}

ThreadCommunicator::~ThreadCommunicator() = default;

int ThreadCommunicator::size() const { return group_->size(); }
Device ThreadCommunicator::device() const { return group_->device(); }
void* ThreadCommunicator::stream() const noexcept { return group_->stream(rank_); }

std::string ThreadCommunicator::describe() const {
  return "ThreadCommunicator(rank " + std::to_string(rank_) + " of " + std::to_string(size()) +
         ", " + device_name(device()) + ")";
}

WorkHandle ThreadCommunicator::allreduce(TensorView send, TensorView recv, ReduceOp op) {
  check_allreduce(send, recv);
  count_traffic(allreduce_wire_bytes(send.nbytes(), size()));
  return group_->arrive(rank_, {.kind = Kind::kAllreduce, .send = send, .recv = recv, .op = op},
                        "allreduce", send.numel());
}

WorkHandle ThreadCommunicator::allgather(TensorView send, TensorView recv) {
  check_allgather(send, recv);
  count_traffic(allgather_wire_bytes(send.nbytes(), size()));
  return group_->arrive(rank_, {.kind = Kind::kAllgather, .send = send, .recv = recv}, "allgather",
                        send.numel());
}

WorkHandle ThreadCommunicator::allgatherv(TensorView send, TensorView recv,
                                          std::span<const std::size_t> counts) {
  check_allgatherv(send, recv, counts);
  count_traffic(send.nbytes() * static_cast<std::uint64_t>(size() - 1));
  return group_->arrive(
      rank_, {.kind = Kind::kAllgatherv, .send = send, .recv = recv, .send_counts = counts},
      "allgatherv", recv.numel());
}

WorkHandle ThreadCommunicator::alltoall(TensorView send, TensorView recv) {
  check_alltoall(send, recv);
  count_traffic(alltoall_wire_bytes(send.nbytes(), size()));
  return group_->arrive(rank_, {.kind = Kind::kAlltoall, .send = send, .recv = recv}, "alltoall",
                        send.numel());
}

WorkHandle ThreadCommunicator::alltoallv(TensorView send, std::span<const std::size_t> send_counts,
                                         TensorView recv,
                                         std::span<const std::size_t> recv_counts) {
  check_alltoallv(send, send_counts, recv, recv_counts);
  count_traffic(alltoallv_wire_bytes(send_counts, dtype_size(send.dtype()), rank_));
  return group_->arrive(rank_,
                        {.kind = Kind::kAlltoallv,
                         .send = send,
                         .recv = recv,
                         .send_counts = send_counts,
                         .recv_counts = recv_counts},
                        "alltoallv", recv.numel());
}

WorkHandle ThreadCommunicator::broadcast(TensorView buffer, int root) {
  check_broadcast(buffer, root);
  if (rank_ == root) count_traffic(buffer.nbytes());
  return group_->arrive(rank_,
                        {.kind = Kind::kBroadcast, .send = buffer, .recv = buffer, .root = root},
                        "broadcast", buffer.numel());
}

WorkHandle ThreadCommunicator::barrier() {
  return group_->arrive(rank_, {.kind = Kind::kBarrier}, "barrier", 0);
}

void ThreadCommunicator::abort(const std::string& reason) { group_->abort(rank_, reason); }

std::unique_ptr<ThreadCommunicator> ThreadCommunicator::split_into(int color, int key) {
  GRADCOMM_CHECK_ARG(color >= 0 || color == kNoColor, "ThreadCommunicator::split on rank ", rank_,
                     ": color ", color, " (a color is >= 0, or kNoColor)");
  WorkHandle work =
      group_->arrive(rank_, {.kind = Kind::kSplit, .color = color, .key = key}, "split", 0);
  work->wait();
  const thread_comm::Slot& slot = *static_cast<thread_comm::Work&>(*work).slot;
  const auto me = static_cast<std::size_t>(rank_);
  if (!slot.split_groups[me]) return nullptr;
  return std::unique_ptr<ThreadCommunicator>(
      new ThreadCommunicator(slot.split_groups[me], slot.split_ranks[me]));
}

std::unique_ptr<Communicator> ThreadCommunicator::split(int color, int key) {
  return split_into(color, key);
}

std::unique_ptr<Communicator> ThreadCommunicator::split_shared() {
  return split_into(group_->host_of(rank_), rank_);
}

}  // namespace gradcomm
