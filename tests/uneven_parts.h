// The uneven alltoallv the communicator tests share (MPI, NCCL, threads): rank s sends
// (s + d) % 3 int32 elements to rank d, some parts empty, each element naming its sender,
// its receiver and its index, so a part that lands in the wrong place shows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <numeric>
#include <vector>

namespace gradcomm::testing {

struct UnevenParts {
  std::vector<std::size_t> send_counts, recv_counts;
  std::vector<std::int32_t> send;
  std::vector<std::int32_t> expected;  // what `rank` must receive, in rank order
  std::uint64_t bytes_to_others = 0;   // what the traffic counters must add

  static std::size_t count(int from, int to) { return static_cast<std::size_t>((from + to) % 3); }
  static std::int32_t value(int from, int to, std::size_t j) {
    return 1000 * from + 10 * to + static_cast<std::int32_t>(j);
  }

  UnevenParts(int rank, int size) {
    for (int other = 0; other < size; ++other) {
      send_counts.push_back(count(rank, other));
      recv_counts.push_back(count(other, rank));
      for (std::size_t j = 0; j < count(rank, other); ++j) send.push_back(value(rank, other, j));
      for (std::size_t j = 0; j < count(other, rank); ++j)
        expected.push_back(value(other, rank, j));
      if (other != rank) bytes_to_others += sizeof(std::int32_t) * count(rank, other);
    }
  }
  std::size_t received() const {
    return std::accumulate(recv_counts.begin(), recv_counts.end(), std::size_t{0});
  }
};

}  // namespace gradcomm::testing
