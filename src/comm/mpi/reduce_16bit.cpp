#include "comm/mpi/reduce_16bit.h"

#include <algorithm>
#include <cstdint>
#include <functional>

#include "core/float16.h"

namespace gradcomm::detail {
namespace {

template <float (*ToFloat)(std::uint16_t), std::uint16_t (*FromFloat)(float), typename Combine>
void reduce_16bit(void* in, void* inout, int* len, Combine combine) {
  auto* a = static_cast<const std::uint16_t*>(in);
  auto* b = static_cast<std::uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = FromFloat(combine(ToFloat(a[i]), ToFloat(b[i])));
}

}  // namespace

void half_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<half_to_float, float_to_half>(in, inout, len, std::plus<float>());
}
void half_max(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<half_to_float, float_to_half>(
      in, inout, len, [](float x, float y) { return std::max(x, y); });
}
void half_min(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<half_to_float, float_to_half>(
      in, inout, len, [](float x, float y) { return std::min(x, y); });
}
void bfloat_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<bfloat16_to_float, float_to_bfloat16>(in, inout, len, std::plus<float>());
}
void bfloat_max(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<bfloat16_to_float, float_to_bfloat16>(
      in, inout, len, [](float x, float y) { return std::max(x, y); });
}
void bfloat_min(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<bfloat16_to_float, float_to_bfloat16>(
      in, inout, len, [](float x, float y) { return std::min(x, y); });
}

}  // namespace gradcomm::detail
