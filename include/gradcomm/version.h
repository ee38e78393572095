// The library's version, the one CMake's project() declares.
#pragma once

namespace gradcomm {
const char* version() noexcept;  // "major.minor.patch"
}  // namespace gradcomm
