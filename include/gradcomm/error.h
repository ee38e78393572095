// gradcomm::Error: the one exception type thrown at the API boundary.
#pragma once

#include <charconv>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace gradcomm {

enum class ErrorCode : int {
  kInvalidArgument = 1,  // a setting or argument is out of range
  kSizeMismatch = 2,     // sizes disagree (between tensors, or across ranks)
  kCommunication = 3,    // the transport (MPI, NCCL) reported a failure
  kCorruptPayload = 4,   // a received payload or checkpoint fails validation
  kNonFinite = 5,        // NaN or Inf met under the `error` policy
  kUnsupported = 6,      // not built in, or not available on this device
  kInternal = 7,         // a broken invariant: a bug in gradcomm
  kCuda = 8,             // a CUDA runtime call failed
  kIo = 9,               // a file (a checkpoint shard) could not be read or written
};

const char* error_code_name(ErrorCode code) noexcept;

// Carries a code and a message that says what failed, where, on which rank and with
// which sizes. `where()` is "file:line (function)" of the check that threw.
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, std::string message, std::string where = {});

  ErrorCode code() const noexcept { return code_; }
  const std::string& message() const noexcept { return message_; }
  const std::string& where() const noexcept { return where_; }

 private:
  ErrorCode code_;
  std::string message_;
  std::string where_;
};

namespace detail {
[[noreturn]] void throw_error(ErrorCode code, const std::string& message, const char* file,
                              int line, const char* function);

// A floating-point number in its shortest form that reads back exactly ("0.1", "1e-05"):
// messages and settings fingerprints show what the user typed, and two settings that
// differ never print alike.
template <typename Float>
std::string shortest(Float x) {
  char text[64];
  const auto end = std::to_chars(text, text + sizeof text, x).ptr;
  return std::string(text, end);
}

template <typename Part>
void append_part(std::ostringstream& out, const Part& part) {
  if constexpr (std::is_floating_point_v<Part>) {
    out << shortest(part);
  } else {
    out << part;
  }
}

// Builds a message from any streamable pieces: GRADCOMM_CHECK(a == b, "n=", n, " k=", k).
// Floating-point pieces print in their shortest exact form.
template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (append_part(out, parts), ...);
  return out.str();
}
}  // namespace detail

}  // namespace gradcomm

// Throws gradcomm::Error(code, message) with the location of the check.
#define GRADCOMM_THROW(code, ...)                                                         \
  ::gradcomm::detail::throw_error((code), ::gradcomm::detail::concat(__VA_ARGS__), __FILE__, \
                                  __LINE__, __func__)

// The one checking helper used across the code base.
#define GRADCOMM_CHECK(cond, code, ...)              \
  do {                                               \
    if (!(cond)) [[unlikely]] {                      \
      GRADCOMM_THROW((code), __VA_ARGS__);           \
    }                                                \
  } while (0)

#define GRADCOMM_CHECK_ARG(cond, ...) \
  GRADCOMM_CHECK(cond, ::gradcomm::ErrorCode::kInvalidArgument, __VA_ARGS__)
