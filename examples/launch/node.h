// What this rank's node offers, checked before a program starts: whether what it is about
// to allocate fits in the node's memory (a size that cannot be allocated is refused with
// what it asks and what there is, instead of std::bad_alloc or the OOM killer), and
// whether it can write its output file.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "gradcomm/mpi_communicator.h"

namespace launch {

// MemAvailable of /proc/meminfo, in bytes; nullopt where it cannot be read (not Linux).
std::optional<std::uint64_t> available_memory();

// How many ranks of `comm` share this rank's node (MPI_COMM_TYPE_SHARED). Collective.
int ranks_on_this_node(const gradcomm::MpiCommunicator& comm);

// Empty when `ranks_on_node` ranks of `bytes_per_rank` each fit in `available` (nullopt:
// unknown, so it fits); else a message naming `what`, what it asks and what there is.
std::string memory_shortfall(double bytes_per_rank, int ranks_on_node, std::optional<std::uint64_t> available,
                             const std::string& what);

// Empty when `path` can be created or written (its directory exists and is writable);
// else a message naming `flag` and the directory.
std::string unwritable_output(const std::string& flag, const std::string& path);

// "1.5 GiB", "512 B": for messages.
std::string human_bytes(double bytes);

}  // namespace launch
