// CPU kernels of the 1-bit compressed allreduce (docs/algorithms/onebit-adam.md). Plain
// pointers and counts, no allocation, no communication. The element arithmetic and the
// sign layout are kernels/shared/onebit_math.h, shared with the CUDA kernels; the SSE2
// loops compute the same fp32 operations as the scalar ones.
#pragma once

#include <cstddef>
#include <cstdint>

namespace gradcomm::kernels {

struct SumSq {
  double sumsq = 0;           // sum of squares, accumulated in double
  std::size_t nonfinite = 0;  // non-finite inputs, which count as 0
};

// Worker pass 1: the squared norm of x + err, where x has `x_count` elements and is 0
// beyond them (the padding), and err has `count` >= x_count elements. Reads only.
SumSq onebit_compensated_sumsq(const float* x, std::size_t x_count, const float* err,
                               std::size_t count);

// Worker pass 2 (and the server's recompress): v = x + err (x as above; x may be null
// when x_count is 0), writes the sign bits of v into bits[count / 8] and
// err = v - scale * sign(v). count must be a multiple of 8.
void onebit_pack_with_error(const float* x, std::size_t x_count, float* err, std::size_t count,
                            float scale, std::uint8_t* bits);

// Server pass 1: `segments` points at rank 0's [fp32 scale][count/8 bytes of signs];
// rank r's segment is `stride` bytes further. err[i] becomes
//   (sum over r in rank order of scale_r * sign_r[i]) / ranks + err[i]
// and the squared norm of the result is returned. count must be a multiple of 8.
double onebit_server_accumulate(const std::uint8_t* segments, std::size_t stride, int ranks,
                                float* err, std::size_t count);

// out[i] = sign_i * scale for i < count (count may end inside a byte).
void onebit_unpack(const std::uint8_t* bits, float scale, float* out, std::size_t count);

// sqrt(sumsq / count) as float; 0 for count 0.
float onebit_scale(double sumsq, std::size_t count);

}  // namespace gradcomm::kernels
