// How gradcomm's programs (gradcomm-train, gradcomm-bench) start under mpirun, so that a
// mistake on one rank ends every rank with a message instead of a hang:
//  1. each rank does what it can alone (parse its command line, read its files, check
//     its memory) and keeps the first failure in a LocalStart, talking to no one;
//  2. agree_to_start(), the program's first collective, tells every rank who failed, and
//     every rank returns the same exit status, the failed ones printing their reason;
//  3. agree_on_settings(): ranks given other settings (the text of settings.h) all stop;
//  4. from there on a failure on one rank may leave the others waiting in a collective:
//     abort_job() ends the whole job (MPI_Abort), unless the failure is known to be
//     raised on every rank alike.
#pragma once

#include <stdexcept>
#include <string>

#include "gradcomm/communicator.h"

namespace launch {

// A failure the ranks decided together, after a collective that told each rank every
// rank's outcome: every rank throws it at the same point, so each can end normally.
class RaisedOnEveryRank : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// One rank's outcome before any collective.
class LocalStart {
 public:
  void fail(const std::string& why) {
    if (error_.empty()) error_ = why.empty() ? "failed (no reason given)" : why;
  }
  void ask_help() noexcept { help_ = true; }
  bool failed() const noexcept { return !error_.empty(); }
  bool wants_help() const noexcept { return help_; }
  const std::string& error() const noexcept { return error_; }

 private:
  std::string error_;
  bool help_ = false;
};

// What a rank does after a collective decision; the same `go` and `exit_status` on every
// rank.
struct Verdict {
  bool go = true;
  int exit_status = 0;       // when !go: what every rank returns (0: every rank asked --help)
  bool print_usage = false;  // this rank prints the usage (rank 0, when all asked --help)
  std::string message;       // this rank's line for stderr; empty: none
};

// Exit status of every rank when the job does not start: a command line, a file or the
// memory of some rank does not allow it.
inline constexpr int kRefusedToStart = 2;

// Collective, and the first of the program: one small allgather of each rank's state.
// Failures on every rank with the same reason are printed once, by rank 0; otherwise each
// failed rank prints its own and the others name the ranks that failed.
Verdict agree_to_start(gradcomm::Communicator& comm, const LocalStart& local, const std::string& program);

// Collective: gradcomm::check_agreement on `settings` (settings.h). When the ranks
// differ, every rank stops with kRefusedToStart and rank 0 prints the first differing
// setting with both values.
Verdict agree_on_settings(gradcomm::Communicator& comm, const std::string& settings, const std::string& program);

// Ends the whole job from this rank: prints `why` and calls comm.abort (MPI_Abort).
[[noreturn]] void abort_job(gradcomm::Communicator& comm, const std::string& program, const std::string& why);

}  // namespace launch
