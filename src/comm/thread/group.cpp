#include "comm/thread/group.h"

#include <algorithm>
#include <thread>

namespace gradcomm {

using thread_comm::Call;
using thread_comm::Kind;
using thread_comm::Slot;
using thread_comm::SlotState;

namespace thread_comm {

const char* kind_name(Kind kind) noexcept {
  switch (kind) {
    case Kind::kAllreduce:
      return "allreduce";
    case Kind::kAllgather:
      return "allgather";
    case Kind::kAllgatherv:
      return "allgatherv";
    case Kind::kAlltoall:
      return "alltoall";
    case Kind::kAlltoallv:
      return "alltoallv";
    case Kind::kBroadcast:
      return "broadcast";
    case Kind::kBarrier:
      return "barrier";
    case Kind::kSplit:
      return "split";
  }
  return "collective";
}

}  // namespace thread_comm

ThreadCommunicator::Group::Group(int size, ThreadCommunicatorOptions options,
                                 std::vector<int> host_of_rank,
                                 std::shared_ptr<thread_comm::Family> family)
    : size_(size),
      options_(std::move(options)),
      host_of_rank_(std::move(host_of_rank)),
      family_(std::move(family)),
      issued_(static_cast<std::size_t>(size), 0) {
  if (options_.device == Device::kCuda) {
#if defined(GRADCOMM_HAVE_CUDA)
    mover_ = thread_comm::make_cuda_mover(size_, options_.cuda_device, options_.streams);
    options_.cuda_device = mover_->cuda_device();  // groups split from this one use it too
#else
    GRADCOMM_THROW(ErrorCode::kUnsupported,
                   "ThreadCommunicator on CUDA buffers: gradcomm was built without CUDA");
#endif
  } else {
    mover_ = thread_comm::make_host_mover();
  }
}

ThreadCommunicator::Group::~Group() {
  for (Slot* slot : slots_) {
    mover_->forget(*slot);
    delete slot;
  }
  for (Slot* slot : free_slots_) {
    mover_->forget(*slot);
    delete slot;
  }
  for (thread_comm::Work* work : free_works_) delete work;
}

Slot& ThreadCommunicator::Group::slot_for(std::uint64_t sequence) {
  while (first_sequence_ + slots_.size() <= sequence) {
    Slot* slot;
    if (free_slots_.empty()) {
      slot = new Slot(size_);
    } else {
      slot = free_slots_.back();
      free_slots_.pop_back();
    }
    slot->sequence = first_sequence_ + slots_.size();
    slot->arrived = slot->released = 0;
    slot->state = SlotState::kWaiting;
    slot->error.clear();
    std::fill(slot->present.begin(), slot->present.end(), 0);
    slot->split_groups.clear();
    slot->split_ranks.clear();
    mover_->prepare(*slot);
    slots_.push_back(slot);
  }
  return *slots_[sequence - first_sequence_];
}

WorkHandle ThreadCommunicator::Group::arrive(int rank, const Call& call, const char* what,
                                             std::size_t numel) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (family_->aborted.load()) {
    GRADCOMM_THROW(ErrorCode::kCommunication, what, " on rank ", rank, " of ", size_,
                   " (ThreadCommunicator): the group was aborted: ", family_->reason);
  }
  const std::uint64_t sequence = issued_[static_cast<std::size_t>(rank)]++;
  Slot& slot = slot_for(sequence);
  thread_comm::Arrival& mine = slot.arrivals[static_cast<std::size_t>(rank)];
  mine.send = call.send;
  mine.recv = call.recv;
  mine.op = call.op;
  mine.root = call.root;
  mine.color = call.color;
  mine.key = call.key;
  mine.send_counts.assign(call.send_counts.begin(), call.send_counts.end());
  mine.recv_counts.assign(call.recv_counts.begin(), call.recv_counts.end());
  if (slot.arrived == 0) {
    slot.kind = call.kind;
  } else if (slot.kind != call.kind && slot.error.empty()) {
    slot.error =
        detail::concat("collective #", sequence, " of this ThreadCommunicator is ",
                       thread_comm::kind_name(slot.kind), " on the ranks that called it first and ",
                       thread_comm::kind_name(call.kind), " on rank ", rank,
                       ": every rank must issue the same collectives in the same order");
    slot.error_code = ErrorCode::kInvalidArgument;
  }
  slot.present[static_cast<std::size_t>(rank)] = 1;
  slot.arrived += 1;
  mover_->arrived(slot, rank);

  thread_comm::Work* work;
  if (free_works_.empty()) {
    work = new thread_comm::Work();
  } else {
    work = free_works_.back();
    free_works_.pop_back();
  }
  work->group = shared_from_this();
  work->slot = &slot;
  work->rank = rank;
  work->what = what;
  work->numel = numel;
  work->complete = false;
  WorkHandle handle(work);
  if (slot.arrived == size_ && slot.state == SlotState::kWaiting) run(slot, lock);
  return handle;
}

void ThreadCommunicator::Group::run(Slot& slot, std::unique_lock<std::mutex>& lock) {
  if (slot.error.empty()) slot.error = thread_comm::disagreement(slot, size_);
  if (!slot.error.empty()) {
    slot.state = SlotState::kDone;
    changed_.notify_all();
    return;
  }
  slot.state = SlotState::kRunning;
  lock.unlock();  // the copies run without the lock: other ranks go on calling
  std::string failure;
  ErrorCode code = ErrorCode::kInternal;
  try {
    if (slot.kind == Kind::kSplit) {
      run_split(slot);
    } else {
      thread_comm::execute(slot, *mover_, size_);
    }
  } catch (const Error& e) {
    failure = e.message();
    code = e.code();
  } catch (const std::exception& e) {
    failure = e.what();
  }
  lock.lock();
  if (!failure.empty()) {
    slot.error = failure;
    slot.error_code = code;
  }
  slot.state = SlotState::kDone;
  changed_.notify_all();
}

void ThreadCommunicator::Group::throw_if_failed(const thread_comm::Work& work) const {
  // The abort first: it is the cause of what else may have failed since.
  if (family_->aborted.load()) {
    GRADCOMM_THROW(ErrorCode::kCommunication, work.what, " of ", work.numel, " elements on rank ",
                   work.rank, " of ", size_,
                   " (ThreadCommunicator): the group was aborted: ", family_->reason);
  }
  const Slot& slot = *work.slot;
  if (!slot.error.empty()) {
    GRADCOMM_THROW(slot.error_code, work.what, " on rank ", work.rank, " of ", size_,
                   " (ThreadCommunicator): ", slot.error);
  }
}

void ThreadCommunicator::Group::throw_timeout(const thread_comm::Work& work,
                                              std::chrono::steady_clock::duration waited) const {
  const Slot& slot = *work.slot;
  std::string missing, progress;
  for (int r = 0; r < size_; ++r) {
    if (slot.present[static_cast<std::size_t>(r)]) continue;
    missing += (missing.empty() ? "" : ", ") + std::to_string(r);
    progress += (progress.empty() ? "" : ", ") + std::string("rank ") + std::to_string(r) +
                " has called " + std::to_string(issued_[static_cast<std::size_t>(r)]);
  }
  GRADCOMM_THROW(ErrorCode::kCommunication, work.what, " of ", work.numel, " elements on rank ",
                 work.rank, " did not complete within ",
                 std::chrono::duration<double>(waited).count(), " s (collective_timeout): ",
                 missing.empty()
                     ? std::string("every rank has called it; its copies are still running")
                     : "rank(s) " + missing + " have not called it (it is collective #" +
                           std::to_string(slot.sequence) + " of this ThreadCommunicator; " +
                           progress + ")");
}

void ThreadCommunicator::Group::wait(thread_comm::Work& work) {
  if (work.complete) return;
  const auto start = std::chrono::steady_clock::now();
  const bool bounded = options_.collective_timeout.count() > 0;
  const auto deadline = start + options_.collective_timeout;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      throw_if_failed(work);
      if (work.slot->state == SlotState::kDone) break;
      if (!bounded) {
        changed_.wait(lock);
      } else if (changed_.wait_until(lock, deadline) == std::cv_status::timeout &&
                 work.slot->state != SlotState::kDone) {
        throw_if_failed(work);
        throw_timeout(work, std::chrono::steady_clock::now() - start);
      }
    }
  }
  // On CUDA the copies are queued; poll their events under the same deadline and abort.
  for (unsigned polls = 0; !mover_->complete(*work.slot, work.rank); ++polls) {
    if (family_->aborted.load()) {
      std::lock_guard<std::mutex> lock(mutex_);
      throw_if_failed(work);
    }
    if (bounded && std::chrono::steady_clock::now() > deadline) {
      std::lock_guard<std::mutex> lock(mutex_);
      throw_timeout(work, std::chrono::steady_clock::now() - start);
    }
    std::this_thread::yield();
  }
  work.complete = true;
}

bool ThreadCommunicator::Group::test(thread_comm::Work& work) {
  if (work.complete) return true;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    throw_if_failed(work);
    if (work.slot->state != SlotState::kDone) return false;
  }
  if (!mover_->complete(*work.slot, work.rank)) return false;
  work.complete = true;
  return true;
}

void ThreadCommunicator::Group::release(thread_comm::Work* work) noexcept {
  // A handle dropped without wait(): complete it first (as MpiCommunicator does), so the
  // rank's buffers are never written after it let them go.
  if (!work->complete) {
    try {
      wait(*work);
    } catch (...) {
    }
  }
  const std::shared_ptr<Group> keep = std::move(work->group);  // may be the last owner
  Slot& slot = *work->slot;
  bool queued = false;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return slot.state != SlotState::kRunning; });
    if (slot.state == SlotState::kWaiting) {
      // Given up (timeout or abort) before every rank called it: it must never run now.
      slot.state = SlotState::kCancelled;
      if (slot.error.empty()) {
        slot.error = detail::concat(thread_comm::kind_name(slot.kind), " (collective #",
                                    slot.sequence, ") was abandoned by rank ", work->rank,
                                    " before every rank had called it");
        slot.error_code = ErrorCode::kCommunication;
      }
      changed_.notify_all();
    }
    queued = !work->complete && slot.state == SlotState::kDone && slot.error.empty();
  }
  if (queued) mover_->settle(slot, work->rank);  // CUDA: its copies may still be in flight
  std::lock_guard<std::mutex> lock(mutex_);
  slot.released += 1;
  work->slot = nullptr;
  try {
    free_works_.push_back(work);
  } catch (...) {
    delete work;
  }
  recycle_finished_slots();
}

void ThreadCommunicator::Group::recycle_finished_slots() {
  while (!slots_.empty() && slots_.front()->released == size_) {
    Slot* slot = slots_.front();
    slots_.pop_front();
    first_sequence_ += 1;
    try {
      free_slots_.push_back(slot);
    } catch (...) {
      mover_->forget(*slot);
      delete slot;
    }
  }
}

void ThreadCommunicator::Group::abort(int rank, const std::string& reason) {
  std::vector<std::shared_ptr<Group>> groups;
  {
    std::lock_guard<std::mutex> lock(family_->mutex);
    if (family_->aborted.load()) return;
    family_->reason = "rank " + std::to_string(rank) + " aborted: " + reason;
    family_->aborted.store(true);
    for (const auto& weak : family_->groups) {
      if (auto group = weak.lock()) groups.push_back(std::move(group));
    }
  }
  for (const auto& group : groups) {
    std::lock_guard<std::mutex> lock(group->mutex_);  // no waiter misses the wake-up
    group->changed_.notify_all();
  }
}

void ThreadCommunicator::Group::run_split(Slot& slot) {
  // Colors in the order of their lowest rank; members ranked by (key, rank).
  slot.split_groups.assign(static_cast<std::size_t>(size_), nullptr);
  slot.split_ranks.assign(static_cast<std::size_t>(size_), -1);
  std::vector<char> placed(static_cast<std::size_t>(size_), 0);
  for (int first = 0; first < size_; ++first) {
    const int color = slot.arrivals[static_cast<std::size_t>(first)].color;
    if (placed[static_cast<std::size_t>(first)] || color < 0) continue;
    std::vector<int> members;
    for (int r = first; r < size_; ++r) {
      if (slot.arrivals[static_cast<std::size_t>(r)].color == color) {
        members.push_back(r);
        placed[static_cast<std::size_t>(r)] = 1;
      }
    }
    std::stable_sort(members.begin(), members.end(), [&](int a, int b) {
      return slot.arrivals[static_cast<std::size_t>(a)].key <
             slot.arrivals[static_cast<std::size_t>(b)].key;
    });
    std::vector<int> hosts;
    for (int r : members) hosts.push_back(host_of(r));
    ThreadCommunicatorOptions options = options_;
    options.streams.clear();  // the new group's ranks get streams of their own
    auto group = std::make_shared<Group>(static_cast<int>(members.size()), options,
                                         std::move(hosts), family_);
    {
      std::lock_guard<std::mutex> lock(family_->mutex);
      family_->groups.push_back(group);
    }
    for (std::size_t i = 0; i < members.size(); ++i) {
      slot.split_groups[static_cast<std::size_t>(members[i])] = group;
      slot.split_ranks[static_cast<std::size_t>(members[i])] = static_cast<int>(i);
    }
  }
}

}  // namespace gradcomm
