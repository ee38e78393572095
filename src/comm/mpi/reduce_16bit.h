// MPI has no float16 or bfloat16 type: these reductions (MPI_User_function, for
// MPI_Op_create over MPI_UINT16_T) widen each pair to float32, combine, and round back.
#pragma once

#include <mpi.h>

namespace gradcomm::detail {

void half_sum(void* in, void* inout, int* len, MPI_Datatype*);
void half_max(void* in, void* inout, int* len, MPI_Datatype*);
void half_min(void* in, void* inout, int* len, MPI_Datatype*);
void bfloat_sum(void* in, void* inout, int* len, MPI_Datatype*);
void bfloat_max(void* in, void* inout, int* len, MPI_Datatype*);
void bfloat_min(void* in, void* inout, int* len, MPI_Datatype*);

}  // namespace gradcomm::detail
