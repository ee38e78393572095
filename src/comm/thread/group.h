// The rendezvous of a ThreadCommunicator group: rank r's k-th collective joins slot k;
// the last rank to join runs it (execute.cpp) through the group's Mover, and the others'
// works see it done. Slots and works are recycled, so a steady sequence of collectives
// allocates nothing once the pools have grown.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "comm/thread/mover.h"
#include "gradcomm/thread_communicator.h"

namespace gradcomm::thread_comm {

enum class Kind : std::uint8_t {
  kAllreduce,
  kAllgather,
  kAllgatherv,
  kAlltoall,
  kAlltoallv,
  kBroadcast,
  kBarrier,
  kSplit
};
const char* kind_name(Kind kind) noexcept;

// One rank's call, as passed (the spans are copied into its Arrival).
struct Call {
  Kind kind = Kind::kBarrier;
  TensorView send{}, recv{};
  ReduceOp op = ReduceOp::kSum;
  int root = 0;
  int color = 0, key = 0;
  std::span<const std::size_t> send_counts{}, recv_counts{};  // allgatherv: counts in send_counts
};

struct Arrival {
  TensorView send, recv;
  ReduceOp op = ReduceOp::kSum;
  int root = 0;
  int color = 0, key = 0;
  std::vector<std::size_t> send_counts, recv_counts;  // grow-only: the slot is recycled
};

enum class SlotState : std::uint8_t { kWaiting, kRunning, kDone, kCancelled };

struct Slot {
  explicit Slot(int size)
      : arrivals(static_cast<std::size_t>(size)), present(static_cast<std::size_t>(size)) {}
  std::uint64_t sequence = 0;
  Kind kind = Kind::kBarrier;
  std::vector<Arrival> arrivals;  // by rank
  std::vector<char> present;      // by rank: has called it
  int arrived = 0;
  int released = 0;
  SlotState state = SlotState::kWaiting;
  // A disagreement between the ranks' calls, a failure while running, or an abandoned
  // collective: every rank's wait() throws it.
  std::string error;
  ErrorCode error_code = ErrorCode::kSizeMismatch;
  // kSplit: each rank's new group (null for kNoColor) and its rank there.
  std::vector<std::shared_ptr<ThreadCommunicator::Group>> split_groups;
  std::vector<int> split_ranks;
  std::vector<void*> device_events;  // the Mover's
};

// Data movement and the cross-rank checks of a slot whose ranks have all arrived.
// disagreement(): "" when the calls agree, else what differs, naming the ranks.
std::string disagreement(const Slot& slot, int size);
void execute(Slot& slot, Mover& mover, int size);

// The groups created together and split from one another: abort() ends them all, as
// MPI_Abort ends the whole job.
struct Family {
  std::mutex mutex;
  std::atomic<bool> aborted{false};
  std::string reason;  // written once, before `aborted` is set
  std::vector<std::weak_ptr<ThreadCommunicator::Group>> groups;
};

class Work;

}  // namespace gradcomm::thread_comm

namespace gradcomm {

class ThreadCommunicator::Group : public std::enable_shared_from_this<Group> {
 public:
  Group(int size, ThreadCommunicatorOptions options, std::vector<int> host_of_rank,
        std::shared_ptr<thread_comm::Family> family);
  ~Group();
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  int size() const noexcept { return size_; }
  Device device() const noexcept { return options_.device; }
  void* stream(int rank) const { return mover_->stream(rank); }
  int host_of(int rank) const { return host_of_rank_[static_cast<std::size_t>(rank)]; }

  // Joins `rank`'s next collective, and runs it when `rank` is the last to join.
  WorkHandle arrive(int rank, const thread_comm::Call& call, const char* what, std::size_t numel);
  void abort(int rank, const std::string& reason);

  // For thread_comm::Work.
  void wait(thread_comm::Work& work);
  bool test(thread_comm::Work& work);
  void release(thread_comm::Work* work) noexcept;

 private:
  thread_comm::Slot& slot_for(std::uint64_t sequence);
  void run(thread_comm::Slot& slot, std::unique_lock<std::mutex>& lock);
  void run_split(thread_comm::Slot& slot);
  void throw_if_failed(const thread_comm::Work& work) const;
  [[noreturn]] void throw_timeout(const thread_comm::Work& work,
                                  std::chrono::steady_clock::duration waited) const;
  void recycle_finished_slots();

  int size_;
  ThreadCommunicatorOptions options_;
  std::vector<int> host_of_rank_;
  std::shared_ptr<thread_comm::Family> family_;
  std::unique_ptr<thread_comm::Mover> mover_;

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<thread_comm::Slot*> slots_;  // in flight, by sequence from first_sequence_
  std::uint64_t first_sequence_ = 0;
  std::vector<thread_comm::Slot*> free_slots_;
  std::vector<thread_comm::Work*> free_works_;
  std::vector<std::uint64_t> issued_;  // by rank: collectives called so far
};

}  // namespace gradcomm

namespace gradcomm::thread_comm {

class Work final : public gradcomm::Work {
 public:
  std::shared_ptr<ThreadCommunicator::Group> group;  // set while handed out
  Slot* slot = nullptr;
  int rank = 0;
  const char* what = "";
  std::size_t numel = 0;
  bool complete = false;  // seen complete by wait() or test(): stays so after an abort

  void wait() override { group->wait(*this); }
  bool test() override { return group->test(*this); }
  void release() noexcept override { group->release(this); }
};

}  // namespace gradcomm::thread_comm
