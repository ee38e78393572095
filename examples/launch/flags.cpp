#include "launch/flags.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string_view>

#include "launch/settings.h"

namespace launch {
namespace {

[[noreturn]] void refuse(const std::string& flag, const std::string& text, const std::string& expected) {
  throw std::invalid_argument(flag + " '" + text + "': expected " + expected);
}

// strtoll and friends skip leading blanks and accept a sign on unsigned values: neither
// is a number a user meant.
bool starts_like_a_number(const std::string& text, bool sign_allowed) {
  if (text.empty()) return false;
  const char c = text[0];
  return (c >= '0' && c <= '9') || c == '.' || (sign_allowed && (c == '-' || c == '+'));
}

// A range end as a user types it: "1000000", not "1e+06".
std::string end_text(double x) {
  return x == std::floor(x) && std::fabs(x) < 1e15 ? std::to_string(static_cast<long long>(x)) : shortest(x);
}

std::string describe(const RealRange& r) {
  const bool has_lo = std::isfinite(r.lo), has_hi = std::isfinite(r.hi);
  if (has_lo && has_hi) {
    return std::string("a finite number in ") + (r.lo_open ? "(" : "[") + end_text(r.lo) + ", " + end_text(r.hi) +
           (r.hi_open ? ")" : "]");
  }
  if (has_lo) return std::string("a finite number ") + (r.lo_open ? "> " : ">= ") + end_text(r.lo);
  if (has_hi) return std::string("a finite number ") + (r.hi_open ? "< " : "<= ") + end_text(r.hi);
  return "a finite number";
}

}  // namespace

std::int64_t parse_integer(const std::string& flag, const std::string& text, std::int64_t lo, std::int64_t hi) {
  errno = 0;
  char* end = nullptr;
  const long long n = starts_like_a_number(text, true) ? std::strtoll(text.c_str(), &end, 10) : 0;
  if (!end || end == text.c_str() || *end != '\0' || errno != 0 || n < lo || n > hi) {
    refuse(flag, text, "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  }
  return n;
}

std::uint64_t parse_unsigned(const std::string& flag, const std::string& text) {
  errno = 0;
  char* end = nullptr;
  const unsigned long long n = starts_like_a_number(text, false) ? std::strtoull(text.c_str(), &end, 10) : 0;
  if (!end || end == text.c_str() || *end != '\0' || errno != 0) {
    refuse(flag, text, "an integer in [0, " + std::to_string(std::numeric_limits<std::uint64_t>::max()) + "]");
  }
  return n;
}

double parse_real(const std::string& flag, const std::string& text, RealRange range) {
  errno = 0;
  char* end = nullptr;
  const double x = starts_like_a_number(text, true) ? std::strtod(text.c_str(), &end) : 0.0;
  const bool parsed = end && end != text.c_str() && *end == '\0' && errno == 0 && std::isfinite(x);
  const bool above_lo = range.lo_open ? x > range.lo : x >= range.lo;
  const bool below_hi = range.hi_open ? x < range.hi : x <= range.hi;
  if (!parsed || !above_lo || !below_hi) refuse(flag, text, describe(range));
  return x;
}

std::uint64_t parse_bytes(const std::string& flag, const std::string& text) {
  errno = 0;
  char* end = nullptr;
  const unsigned long long n = starts_like_a_number(text, false) ? std::strtoull(text.c_str(), &end, 10) : 0;
  if (!end || end == text.c_str() || errno != 0) refuse(flag, text, "a byte count");
  std::uint64_t scale = 1;
  const std::string_view suffix(end);
  if (suffix == "K" || suffix == "k") scale = 1ull << 10;
  else if (suffix == "M" || suffix == "m") scale = 1ull << 20;
  else if (suffix == "G" || suffix == "g") scale = 1ull << 30;
  else if (!suffix.empty()) refuse(flag, text, "a byte count with an optional K, M or G suffix");
  if (n > std::numeric_limits<std::uint64_t>::max() / scale) refuse(flag, text, "a byte count that fits in 64 bits");
  return n * scale;
}

std::chrono::milliseconds parse_seconds(const std::string& flag, const std::string& text) {
  const double seconds = parse_real(flag, text, {0.0, 1e6});
  const auto ms = std::chrono::milliseconds(std::llround(seconds * 1e3));
  // A positive timeout below a millisecond would turn the watchdog off.
  return seconds > 0 && ms.count() == 0 ? std::chrono::milliseconds(1) : ms;
}

}  // namespace launch
