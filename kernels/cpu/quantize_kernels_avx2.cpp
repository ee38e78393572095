// The quantizer's hot loops compiled for AVX2 (twice the SIMD width of the x86-64
// baseline); quantize_kernels.cpp calls them when the CPU has AVX2. No FMA: the results
// are bitwise those of the baseline build.
#include "kernels/cpu/quantize_kernels.h"

#if GRADCOMM_QUANT_HAVE_AVX2
// Standard headers first, so only gradcomm's own loops take the AVX2 target.
#include <algorithm>
#include <cstring>
#include <limits>
#include <emmintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2")
#endif

#define GRADCOMM_QUANT_ISA avx2
#include "kernels/cpu/quantize_kernels_impl.h"
#undef GRADCOMM_QUANT_ISA

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
