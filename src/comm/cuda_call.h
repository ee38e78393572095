// CUDA runtime calls in the communicators (host code compiled only with CUDA): a failed
// call becomes a gradcomm::Error (kCuda) naming what was being done, and DeviceGuard
// makes a device the calling thread's current one for a scope, so that streams, events
// and kernels are used on the device they belong to, whatever device the caller has set.
#pragma once

#include <cuda_runtime.h>

#include "gradcomm/error.h"

#define GRADCOMM_CUDA_CALL(call, ...)                                                    \
  do {                                                                                   \
    const cudaError_t _err = (call);                                                     \
    GRADCOMM_CHECK(_err == cudaSuccess, ::gradcomm::ErrorCode::kCuda, __VA_ARGS__, ": ", \
                   cudaGetErrorString(_err));                                            \
  } while (0)

namespace gradcomm::detail {

class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    GRADCOMM_CUDA_CALL(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device)
      GRADCOMM_CUDA_CALL(cudaSetDevice(device), "cudaSetDevice(", device, ")");
  }
  ~DeviceGuard() {
    int now = previous_;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace gradcomm::detail
