// Error checking and small launch helpers shared by the .cu files (nvcc only).
#pragma once

#include <cuda_runtime.h>

#include "gradcomm/error.h"

namespace gradcomm::kernels::cuda {

// Throws gradcomm::Error (kCuda) naming the call's purpose and CUDA's reason.
#define GRADCOMM_CUDA_OK(call, ...)                                                      \
  do {                                                                                   \
    const cudaError_t gradcomm_status_ = (call);                                         \
    GRADCOMM_CHECK(gradcomm_status_ == cudaSuccess, ::gradcomm::ErrorCode::kCuda,       \
                   __VA_ARGS__, ": ", cudaGetErrorString(gradcomm_status_));            \
  } while (0)

inline cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

// After a launch: a bad configuration surfaces here, not at some later call.
inline void check_launch(const char* kernel) {
  GRADCOMM_CUDA_OK(cudaGetLastError(), "launching ", kernel);
}

}  // namespace gradcomm::kernels::cuda
