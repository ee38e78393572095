// The Compressor interface's defaults and the names of its enums.
#include "gradcomm/compressor.h"

#include "gradcomm/error.h"

namespace gradcomm {

const char* collective_name(Collective collective) noexcept {
  switch (collective) {
    case Collective::kAllreduce: return "allreduce";
    case Collective::kAllgather: return "allgather";
    case Collective::kSparseAllreduce: return "sparse_allreduce";
    case Collective::kAllgatherv: return "allgatherv";
    case Collective::kAlltoall: return "alltoall";
    case Collective::kAlltoallv: return "alltoallv";
  }
  return "unknown";
}

const char* sparse_exchange_name(SparseExchange exchange) noexcept {
  switch (exchange) {
    case SparseExchange::kAllgather: return "allgather";
    case SparseExchange::kReduceScatter: return "reduce_scatter";
    case SparseExchange::kDense: return "dense";
  }
  return "unknown";
}

SparseExchange parse_sparse_exchange(const std::string& name) {
  if (name == "allgather") return SparseExchange::kAllgather;
  if (name == "reduce_scatter") return SparseExchange::kReduceScatter;
  if (name == "dense") return SparseExchange::kDense;
  GRADCOMM_THROW(ErrorCode::kInvalidArgument, "unknown sparse exchange '", name,
                 "' (expected allgather, reduce_scatter or dense)");
}

void Compressor::decode_selection(std::size_t layer, TensorView own_payload, TensorView indices,
                                  TensorView sums, TensorView out) {
  (void)own_payload;
  (void)indices;
  (void)sums;
  (void)out;
  GRADCOMM_THROW(ErrorCode::kUnsupported, name(), ": layer ", layer,
                 " was exchanged by the sparse allreduce, which this compressor does not decode");
}

}  // namespace gradcomm
