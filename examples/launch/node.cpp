#include "launch/node.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace launch {

std::optional<std::uint64_t> available_memory() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string key, unit;
    std::uint64_t kib = 0;
    if (fields >> key >> kib >> unit && key == "MemAvailable:" && unit == "kB") return kib * 1024;
  }
  return std::nullopt;
}

int ranks_on_this_node(const gradcomm::MpiCommunicator& comm) {
  MPI_Comm node = MPI_COMM_NULL;
  int size = 1;
  if (MPI_Comm_split_type(comm.comm(), MPI_COMM_TYPE_SHARED, comm.rank(), MPI_INFO_NULL, &node) == MPI_SUCCESS) {
    MPI_Comm_size(node, &size);
    MPI_Comm_free(&node);
  }
  return size;
}

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (bytes >= 1024 && u < 6) {
    bytes /= 1024;
    ++u;
  }
  char text[64];
  std::snprintf(text, sizeof text, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
  return text;
}

std::string memory_shortfall(double bytes_per_rank, int ranks_on_node, std::optional<std::uint64_t> available,
                             const std::string& what) {
  const double node = bytes_per_rank * ranks_on_node;
  if (!available || node <= static_cast<double>(*available)) return {};
  return what + " needs about " + human_bytes(bytes_per_rank) + " per rank, " + human_bytes(node) + " for the " +
         std::to_string(ranks_on_node) + " rank(s) on this node, but only " +
         human_bytes(static_cast<double>(*available)) + " is available (MemAvailable in /proc/meminfo)";
}

std::string unwritable_output(const std::string& flag, const std::string& path) {
  const std::filesystem::path dir = std::filesystem::absolute(path).parent_path();
  if (::access(dir.c_str(), W_OK) == 0) return {};
  return flag + " " + path + ": cannot write into " + dir.string() + " (missing or not writable)";
}

}  // namespace launch
