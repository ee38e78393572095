// NcclCommunicator::split (ncclCommSplit) and split_shared (the ranks whose hostnames
// match, found with one small allgather over this communicator).
#include <unistd.h>

#include <cstring>
#include <vector>

#include "comm/nccl/nccl_state.h"
#include "gradcomm/agreement.h"

namespace gradcomm {

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key) {
  GRADCOMM_CHECK_ARG(color >= 0 || color == kNoColor, "NcclCommunicator::split on rank ", rank_,
                     ": color ", color, " (a color is >= 0, or kNoColor)");
  State& s = *state_;
  s.check_usable("split");
  const detail::DeviceGuard guard(s.device);
  auto made = std::make_shared<State>();
  made->timeout = s.timeout;
  made->uncaught_at_construction = std::uncaught_exceptions();
  made->rank = rank_;  // for messages until the new rank is known
  made->size = size_;
  made->open(s.device, nullptr);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t part = nullptr;
  const ncclResult_t started =
      ncclCommSplit(s.comm, color == kNoColor ? NCCL_SPLIT_NOCOLOR : color, key, &part, &config);
  // A non-blocking split finishes on the new communicator (none for kNoColor).
  s.settle(started, part ? part : s.comm,
           detail::concat("ncclCommSplit (color ", color, ", key ", key, ")"));
  if (!part) return nullptr;
  made->comm = part;
  int rank = 0, size = 0;
  made->settle(ncclCommUserRank(part, &rank), part, "ncclCommUserRank after ncclCommSplit");
  made->settle(ncclCommCount(part, &size), part, "ncclCommCount after ncclCommSplit");
  made->rank = rank;
  made->size = size;
  return std::unique_ptr<Communicator>(new NcclCommunicator(std::move(made)));
}

std::unique_ptr<Communicator> NcclCommunicator::split_shared() {
  State& s = *state_;
  s.check_usable("split_shared");
  char name[256] = {};
  gethostname(name, sizeof name - 1);
  const std::uint64_t mine = fingerprint_bytes(name, std::strlen(name));
  std::vector<std::uint64_t> hosts(static_cast<std::size_t>(size_));
  {
    const detail::DeviceGuard guard(s.device);
    std::uint64_t* on_device = nullptr;
    GRADCOMM_CUDA_CALL(cudaMalloc(&on_device, sizeof(std::uint64_t) * (hosts.size() + 1)),
                       "split_shared: cudaMalloc on rank ", rank_);
    struct FreeOnExit {
      std::uint64_t* p;
      ~FreeOnExit() { cudaFree(p); }
    } free_on_exit{on_device};
    GRADCOMM_CUDA_CALL(
        cudaMemcpyAsync(on_device, &mine, sizeof mine, cudaMemcpyHostToDevice, s.stream),
        "split_shared: copy to cuda:", s.device);
    allgather(TensorView(on_device, sizeof mine, DType::kUInt8, Device::kCuda, s.device),
              TensorView(on_device + 1, sizeof mine * hosts.size(), DType::kUInt8, Device::kCuda,
                         s.device))
        ->wait();
    GRADCOMM_CUDA_CALL(cudaMemcpyAsync(hosts.data(), on_device + 1, sizeof mine * hosts.size(),
                                       cudaMemcpyDeviceToHost, s.stream),
                       "split_shared: copy from cuda:", s.device);
    GRADCOMM_CUDA_CALL(cudaStreamSynchronize(s.stream),
                       "split_shared: cudaStreamSynchronize on rank ", rank_);
  }
  int color = 0;
  while (hosts[static_cast<std::size_t>(color)] != mine) ++color;  // the host's lowest rank
  return split(color, rank_);
}

}  // namespace gradcomm
