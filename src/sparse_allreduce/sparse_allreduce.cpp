// sparse_allreduce(): one layer through SparseAllreduceGroup, each phase waited for.
#include "gradcomm/sparse_allreduce.h"

#include <cstring>

#include "exchange/start_collective.h"
#include "gradcomm/communicator.h"
#include "gradcomm/error.h"
#include "sparse_allreduce/sparse_group.h"

namespace gradcomm {

SparseSelection sparse_allreduce(Communicator& comm, std::size_t numel, std::span<const std::uint32_t> indices,
                                 std::span<const float> values, const SparseRegions& regions) {
  GRADCOMM_CHECK_ARG(indices.size() == values.size(), "sparse_allreduce on rank ", comm.rank(), ": ",
                     indices.size(), " indices and ", values.size(), " values");
  GRADCOMM_CHECK_ARG(regions.world_size() == comm.size() && regions.numel == numel &&
                         regions.bounds.size() == regions.quotas.size() + 1,
                     "sparse_allreduce on rank ", comm.rank(), ": regions for ", regions.world_size(), " ranks and ",
                     regions.numel, " elements, used with ", comm.size(), " ranks and ", numel,
                     " elements (make them with agree_sparse_regions)");
  std::size_t quota_sum = 0;
  for (std::size_t r = 0; r < regions.quotas.size(); ++r) {
    quota_sum += regions.quotas[r];
    GRADCOMM_CHECK_ARG(regions.bounds[r] <= regions.bounds[r + 1], "sparse_allreduce: region ", r, " is [",
                       regions.bounds[r], ", ", regions.bounds[r + 1], ")");
  }
  GRADCOMM_CHECK_ARG(regions.bounds.front() == 0 && regions.bounds.back() == numel && regions.select <= numel,
                     "sparse_allreduce: regions cover [", regions.bounds.front(), ", ", regions.bounds.back(),
                     ") of ", numel, " elements (quotas summing to ", quota_sum, ", selection of ", regions.select,
                     ")");
  GRADCOMM_CHECK_ARG(numel < 0xffffffffu, "sparse_allreduce: ", numel,
                     " elements; indices are uint32 with 0xffffffff reserved");
  // The group reads a slot list: count | indices | values, as many slots as entries.
  const std::size_t count = indices.size();
  std::vector<std::uint32_t> list(1 + 2 * count);
  list[0] = static_cast<std::uint32_t>(count);
  if (count > 0) {  // an empty span's data() may be null, which memcpy must not get
    std::memcpy(list.data() + 1, indices.data(), 4 * count);
    std::memcpy(list.data() + 1 + count, values.data(), 4 * count);
  }
  // The regions fit the layer (checked above), so the group keeps them as they are.
  SparseRegions used = regions;
  detail::SparseGroupLayer layer;
  layer.numel = numel;
  layer.slots = count;
  layer.select = regions.select;
  layer.payload = reinterpret_cast<const std::byte*>(list.data());
  layer.regions = &used;
  layer.name = "sparse_allreduce";
  detail::SparseAllreduceGroup group;
  group.begin(comm.size(), comm.rank(), false, std::span<const detail::SparseGroupLayer>(&layer, 1));
  SparseSelection out;
  while (!group.done()) {
    const detail::SparsePhaseRequest r = group.request();
    detail::start_collective(comm, r.collective, r.send, r.recv, r.send_counts, r.recv_counts)->wait();
    out.collectives += 1;
    group.complete();
  }
  const auto kept = group.selected_indices(0);
  const auto sums = group.selected_sums(0);
  out.indices.assign(kept.begin(), kept.end());
  out.sums.assign(sums.begin(), sums.end());
  out.wire_bytes = group.wire_bytes();
  return out;
}

}  // namespace gradcomm
