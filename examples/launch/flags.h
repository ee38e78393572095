// Strict parsing of the numbers on gradcomm's command lines (gradcomm-train,
// gradcomm-bench): the whole text must be the number, within its range and finite, or
// std::invalid_argument says which flag, what it was given and what it takes. NaN,
// infinities, overflow, a sign on an unsigned value and trailing text are all refused.
#pragma once

#include <chrono>
#include <cstdint>
#include <limits>
#include <string>

namespace launch {

std::int64_t parse_integer(const std::string& flag, const std::string& text, std::int64_t lo, std::int64_t hi);
std::uint64_t parse_unsigned(const std::string& flag, const std::string& text);  // 0 .. 2^64-1

// A finite real in [lo, hi], with either end open: "(0, 1]" is {0, 1, true, false}.
struct RealRange {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  bool lo_open = false;
  bool hi_open = false;
};
double parse_real(const std::string& flag, const std::string& text, RealRange range);

// A byte count with an optional K, M or G suffix (powers of 1024) that fits in 64 bits.
std::uint64_t parse_bytes(const std::string& flag, const std::string& text);

// Seconds (a finite real in [0, 10^6]) as the watchdog's milliseconds; 0 turns it off.
std::chrono::milliseconds parse_seconds(const std::string& flag, const std::string& text);

}  // namespace launch
