#include "comm/mpi/watchdog.h"

#include "comm/mpi/mpi_call.h"

namespace gradcomm::detail {

Watchdog::Watchdog(std::chrono::milliseconds timeout, const char* what, std::size_t numel, int rank)
    : start_(std::chrono::steady_clock::now()),
      timeout_(timeout),
      what_(what),
      numel_(numel),
      rank_(rank) {}

bool Watchdog::expired(unsigned polls) const {
  if (timeout_.count() <= 0 || polls % 1024 != 1023) return false;
  return std::chrono::steady_clock::now() - start_ >= timeout_;
}

void Watchdog::fail(const std::string& waiting_for) const {
  const auto waited = std::chrono::steady_clock::now() - start_;
  GRADCOMM_THROW(
      ErrorCode::kCommunication, what_, " of ", numel_, " elements on rank ", rank_,
      " did not complete within ", std::chrono::duration<double>(waited).count(),
      " s (collective_timeout): ",
      waiting_for.empty() ? "a peer died, hangs, or stopped calling collectives" : waiting_for);
}

void wait_request(MPI_Request* request, std::chrono::milliseconds timeout, const char* what,
                  std::size_t numel, int rank) {
  if (timeout.count() <= 0) {
    GRADCOMM_MPI_CALL(MPI_Wait(request, MPI_STATUS_IGNORE), what, " of ", numel,
                      " elements failed on rank ", rank);
    return;
  }
  const Watchdog watchdog(timeout, what, numel, rank);
  for (unsigned polls = 0;; ++polls) {
    int done = 0;
    GRADCOMM_MPI_CALL(MPI_Test(request, &done, MPI_STATUS_IGNORE), what, " of ", numel,
                      " elements failed on rank ", rank);
    if (done) return;
    watchdog.check(polls);  // MPI_Test is the progress loop
  }
}

}  // namespace gradcomm::detail
