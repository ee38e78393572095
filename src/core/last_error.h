// The message of the last gradcomm::Error thrown on the calling thread, for code that
// must say why it gives up while an exception unwinds (no handler has it yet):
// MpiCommunicator's destructor, which then aborts the job.
#pragma once

#include <string>

namespace gradcomm::detail {

// Empty when none has been thrown on this thread. It may be older than the exception
// now unwinding if that one is not a gradcomm::Error: say "last", not "current".
const std::string& last_error_on_this_thread() noexcept;

}  // namespace gradcomm::detail
