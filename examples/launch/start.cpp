#include "launch/start.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "gradcomm/agreement.h"
#include "gradcomm/error.h"

namespace launch {
namespace {

enum State : std::uint32_t { kReady = 0, kHelp = 1, kFailed = 2 };

struct RankState {
  std::uint32_t state;
  std::uint64_t reason;  // fingerprint of the failure's text
};

std::string ranks_text(const std::vector<int>& ranks) {
  std::string s;
  for (const int r : ranks) s += (s.empty() ? "" : ", ") + std::to_string(r);
  return s;
}

}  // namespace

Verdict agree_to_start(gradcomm::Communicator& comm, const LocalStart& local, const std::string& program) {
  const std::uint64_t reason = gradcomm::fingerprint_bytes(local.error().data(), local.error().size());
  std::vector<std::uint32_t> mine = {local.failed() ? kFailed : local.wants_help() ? kHelp : kReady,
                                     static_cast<std::uint32_t>(reason), static_cast<std::uint32_t>(reason >> 32)};
  std::vector<std::uint32_t> all(mine.size() * static_cast<std::size_t>(comm.size()));
  comm.allgather(gradcomm::TensorView::of(std::span<std::uint32_t>(mine)),
                 gradcomm::TensorView::of(std::span<std::uint32_t>(all)))
      ->wait();

  std::vector<RankState> ranks;
  std::vector<int> failed, help;
  for (int r = 0; r < comm.size(); ++r) {
    const std::uint32_t* w = &all[3 * static_cast<std::size_t>(r)];
    ranks.push_back({w[0], w[1] | (std::uint64_t{w[2]} << 32)});
    if (w[0] == kFailed) failed.push_back(r);
    if (w[0] == kHelp) help.push_back(r);
  }
  const std::string me = program + ": rank " + std::to_string(comm.rank()) + ": ";
  Verdict v;
  if (failed.empty() && help.empty()) return v;
  v.go = false;
  v.exit_status = kRefusedToStart;
  if (failed.empty() && static_cast<int>(help.size()) == comm.size()) {
    v.exit_status = 0;
    v.print_usage = comm.rank() == 0;
    return v;
  }
  if (failed.empty()) {
    v.message = me + "not starting: rank(s) " + ranks_text(help) +
                " were given --help and the others were not (every rank needs the same command line)";
    return v;
  }
  bool one_reason_everywhere = static_cast<int>(failed.size()) == comm.size();
  for (const RankState& s : ranks) one_reason_everywhere = one_reason_everywhere && s.reason == ranks[0].reason;
  if (one_reason_everywhere) {
    if (comm.rank() == 0) v.message = program + ": " + local.error();
  } else if (local.failed()) {
    v.message = me + local.error();
  } else {
    v.message = me + "not starting: rank(s) " + ranks_text(failed) + " failed before the start (their messages say why)";
  }
  return v;
}

Verdict agree_on_settings(gradcomm::Communicator& comm, const std::string& settings, const std::string& program) {
  Verdict v;
  try {
    gradcomm::check_agreement(comm, {}, settings, program + ": the ranks were started with other settings");
  } catch (const gradcomm::Error& e) {
    // A mismatch is raised alike on every rank (check_agreement gathers every rank's text
    // first); anything else (a timeout) may be this rank's alone.
    if (e.code() != gradcomm::ErrorCode::kSizeMismatch) throw;
    v.go = false;
    v.exit_status = kRefusedToStart;
    if (comm.rank() == 0) v.message = e.message();
  }
  return v;
}

void abort_job(gradcomm::Communicator& comm, const std::string& program, const std::string& why) {
  comm.abort(program + ": " + why);
  std::_Exit(1);  // abort() does not return where MPI_Abort works
}

}  // namespace launch
