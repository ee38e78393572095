// The watchdog of MpiCommunicatorOptions::collective_timeout: a wait that gives up with an
// Error naming the collective (and, where the algorithm can tell, the rank it waits for)
// instead of hanging on a peer that died or stopped.
#pragma once

#include <mpi.h>

#include <chrono>
#include <cstddef>
#include <string>

namespace gradcomm::detail {

class Watchdog {
 public:
  // Starts the clock. A timeout of zero never fires.
  Watchdog(std::chrono::milliseconds timeout, const char* what, std::size_t numel, int rank);
  // Called on every poll of a progress loop: true once the wait has lasted longer than the
  // timeout. The clock is read on one poll in 1024 only: the polls are the progress loop,
  // and must stay as cheap as MPI_Wait's own.
  bool expired(unsigned polls) const;
  // Throws kCommunication: "<what> of <numel> elements on rank <rank> did not complete
  // within <s> s (collective_timeout): " followed by `waiting_for` when the caller knows
  // whom it waits for, else the usual causes.
  [[noreturn]] void fail(const std::string& waiting_for = {}) const;
  void check(unsigned polls) const {
    if (expired(polls)) fail();
  }

 private:
  std::chrono::steady_clock::time_point start_;
  std::chrono::milliseconds timeout_;
  const char* what_;
  std::size_t numel_;
  int rank_;
};

// MPI_Wait, or with a timeout a loop of MPI_Test under a Watchdog. `what`, `numel` and
// `rank` go into the error messages.
void wait_request(MPI_Request* request, std::chrono::milliseconds timeout, const char* what,
                  std::size_t numel, int rank);

}  // namespace gradcomm::detail
