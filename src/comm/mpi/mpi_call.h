// Every MPI call's return code checked, and a failure turned into a gradcomm::Error that
// names the call's purpose, the rank and the sizes, followed by MPI's own text.
#pragma once

#include <mpi.h>

#include <string>

#include "gradcomm/error.h"

namespace gradcomm::detail {

// MPI_Error_string's text for `code`, or the bare code if MPI cannot describe it.
std::string mpi_error_text(int code);

}  // namespace gradcomm::detail

#define GRADCOMM_MPI_CALL(call, ...)                                                          \
  do {                                                                                        \
    const int _rc = (call);                                                                   \
    GRADCOMM_CHECK(_rc == MPI_SUCCESS, ::gradcomm::ErrorCode::kCommunication, __VA_ARGS__, \
                   ": ", ::gradcomm::detail::mpi_error_text(_rc));                            \
  } while (0)
