#include "comm/mpi/reduce_16bit.h"

#include <cstdint>

#include "comm/reduce_element.h"

namespace gradcomm::detail {
namespace {

// MPI's user-function contract: inout[i] = in[i] op inout[i].
template <std::uint16_t (*Combine)(std::uint16_t, std::uint16_t, ReduceOp)>
void reduce_16bit(void* in, void* inout, int* len, ReduceOp op) {
  auto* a = static_cast<const std::uint16_t*>(in);
  auto* b = static_cast<std::uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = Combine(a[i], b[i], op);
}

}  // namespace

void half_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<combine_half>(in, inout, len, ReduceOp::kSum);
}
void half_max(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<combine_half>(in, inout, len, ReduceOp::kMax);
}
void half_min(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<combine_half>(in, inout, len, ReduceOp::kMin);
}
void bfloat_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<combine_bfloat16>(in, inout, len, ReduceOp::kSum);
}
void bfloat_max(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<combine_bfloat16>(in, inout, len, ReduceOp::kMax);
}
void bfloat_min(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<combine_bfloat16>(in, inout, len, ReduceOp::kMin);
}

}  // namespace gradcomm::detail
