#include "gradcomm/local_device.h"

#include <cerrno>
#include <cstdlib>

#include "gradcomm/error.h"

#if defined(GRADCOMM_HAVE_CUDA)
#include "comm/cuda_call.h"
#endif

namespace gradcomm {
namespace {

// The value of `name` as a number >= 0, or -1 when it is not set.
int number_from(const char* name) {
  const char* text = std::getenv(name);
  if (!text) return -1;
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(text, &end, 10);
  GRADCOMM_CHECK_ARG(end != text && *end == '\0' && errno == 0 && value >= 0 && value <= 1 << 20,
                     "environment variable ", name, "='", text,
                     "' is not a local rank or size (a number >= 0)");
  return static_cast<int>(value);
}

}  // namespace

LocalRank local_rank_from_environment() {
  for (const auto& [rank_name, size_name] :
       {std::pair{"OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"},
        std::pair{"LOCAL_RANK", "LOCAL_WORLD_SIZE"}}) {
    const int rank = number_from(rank_name);
    if (rank < 0) continue;
    const int size = number_from(size_name);
    GRADCOMM_CHECK_ARG(size < 0 || rank < size, "environment: ", rank_name, "=", rank,
                       " is not below ", size_name, "=", size);
    return {rank, size < 0 ? 0 : size, rank_name};
  }
  return {0, 0, "none"};
}

std::string LocalDevice::describe() const {
  std::string text =
      "cuda:" + std::to_string(device) + " (local rank " + std::to_string(local.rank);
  if (local.size > 0) text += " of " + std::to_string(local.size);
  text += local.source == "none" ? ", no local rank in the environment" : ", from " + local.source;
  text += "; " + std::to_string(device_count) + (device_count == 1 ? " device)" : " devices)");
  if (local.size > device_count) {
    text += "; " + std::to_string(local.size) + " local ranks share " +
            std::to_string(device_count) + " devices, which NCCL refuses";
  }
  return text;
}

LocalDevice local_cuda_device() {
  LocalDevice chosen;
  chosen.local = local_rank_from_environment();
#if defined(GRADCOMM_HAVE_CUDA)
  const cudaError_t status = cudaGetDeviceCount(&chosen.device_count);
  GRADCOMM_CHECK(status == cudaSuccess && chosen.device_count > 0, ErrorCode::kCuda, "local_cuda_device (local rank ",
                 chosen.local.rank, " from ", chosen.local.source, "): no CUDA device visible (",
                 status == cudaSuccess ? "none found" : cudaGetErrorString(status), ")");
  chosen.device = chosen.local.rank % chosen.device_count;
  GRADCOMM_CUDA_CALL(cudaSetDevice(chosen.device), "local rank ", chosen.local.rank,
                     ": cudaSetDevice(", chosen.device, ")");
  return chosen;
#else
  GRADCOMM_THROW(ErrorCode::kUnsupported, "local_cuda_device (local rank ", chosen.local.rank,
                 " from ", chosen.local.source, "): gradcomm was built without CUDA");
#endif
}

}  // namespace gradcomm
