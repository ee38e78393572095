#include "gradcomm/error.h"

#include "core/last_error.h"

namespace gradcomm {

const char* error_code_name(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "invalid argument";
    case ErrorCode::kSizeMismatch: return "size mismatch";
    case ErrorCode::kCommunication: return "communication failure";
    case ErrorCode::kCorruptPayload: return "corrupt payload";
    case ErrorCode::kNonFinite: return "non-finite value";
    case ErrorCode::kUnsupported: return "unsupported";
    case ErrorCode::kInternal: return "internal error";
    case ErrorCode::kCuda: return "CUDA error";
    case ErrorCode::kIo: return "I/O error";
  }
  return "unknown error";
}

static std::string format_error(ErrorCode code, const std::string& message,
                                const std::string& where) {
  std::string text = "gradcomm: ";
  text += error_code_name(code);
  text += ": ";
  text += message;
  if (!where.empty()) text += " [at " + where + "]";
  return text;
}

Error::Error(ErrorCode code, std::string message, std::string where)
    : std::runtime_error(format_error(code, message, where)),
      code_(code),
      message_(std::move(message)),
      where_(std::move(where)) {}

namespace detail {
namespace {
thread_local std::string last_error;
}  // namespace

const std::string& last_error_on_this_thread() noexcept { return last_error; }

void throw_error(ErrorCode code, const std::string& message, const char* file, int line,
                 const char* function) {
  std::string path = file;
  // Keep the path relative to the source tree: readable, and stable across machines.
  for (const char* root : {"/src/", "/kernels/", "/include/", "/bindings/"}) {
    if (auto pos = path.rfind(root); pos != std::string::npos) {
      path = path.substr(pos + 1);
      break;
    }
  }
  Error error(code, message, path + ":" + std::to_string(line) + " (" + function + ")");
  last_error = error.what();
  throw error;
}
}  // namespace detail

}  // namespace gradcomm
