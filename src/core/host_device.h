// Marks a function that both host code and CUDA kernels call: one definition of a
// numeric rule (a rounding, a format) instead of a CPU copy and a GPU copy that can drift.
#pragma once

#if defined(__CUDACC__)
#define GRADCOMM_HOST_DEVICE __host__ __device__
#else
#define GRADCOMM_HOST_DEVICE
#endif
