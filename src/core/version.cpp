#include "gradcomm/version.h"

// GRADCOMM_VERSION comes from project(gradcomm VERSION ...) in CMakeLists.txt, the one
// place the version is written.
#ifndef GRADCOMM_VERSION
#error "GRADCOMM_VERSION is set by CMakeLists.txt from the project version"
#endif

namespace gradcomm {

const char* version() noexcept { return GRADCOMM_VERSION; }

}  // namespace gradcomm
