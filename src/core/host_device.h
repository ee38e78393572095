// Marks a function that both host code and CUDA kernels call: one definition of a
// numeric rule (a rounding, a format) instead of a CPU copy and a GPU copy that can drift.
#pragma once

#if defined(__CUDACC__)
#define GRADCOMM_HOST_DEVICE __host__ __device__
// For the small per-element steps of a kernel's inner loop, which nvcc must not leave as
// calls.
#define GRADCOMM_HOST_DEVICE_INLINE __host__ __device__ __forceinline__
#else
#define GRADCOMM_HOST_DEVICE
#define GRADCOMM_HOST_DEVICE_INLINE inline
#endif
