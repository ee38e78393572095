#include "compress/device_status.h"

#if defined(GRADCOMM_HAVE_CUDA)

namespace gradcomm::detail {

namespace cuda = kernels::cuda;

DeviceStatus::DeviceStatus(int device) : words_(3 * sizeof(std::uint32_t), device) {}

std::uint32_t* DeviceStatus::nonfinite_word(const ExecutionContext& context, std::size_t layer) {
  if (context.nonfinite_counts != nullptr) return context.nonfinite_counts + layer;
  std::uint32_t* own = words_.as<std::uint32_t>();
  cuda::zero_async(own, sizeof *own, context.cuda_stream);
  return own;
}

std::size_t DeviceStatus::nonfinite_after(const ExecutionContext& context) const {
  if (context.nonfinite_counts != nullptr) return 0;
  std::uint32_t count = 0;
  cuda::copy_to_host_sync(&count, words_.as<std::uint32_t>(), sizeof count, context.cuda_stream);
  return count;
}

std::uint32_t* DeviceStatus::corrupt_word(const ExecutionContext& context, std::size_t layer) {
  if (context.corrupt_payloads != nullptr) return context.corrupt_payloads + layer;
  std::uint32_t* own = words_.as<std::uint32_t>() + 1;
  cuda::fill_bytes_async(own, 0xff, sizeof *own, context.cuda_stream);
  return own;
}

std::uint32_t DeviceStatus::corrupt_after(const ExecutionContext& context) const {
  if (context.corrupt_payloads != nullptr) return kNoCorruptRank;
  std::uint32_t rank = kNoCorruptRank;
  cuda::copy_to_host_sync(&rank, words_.as<std::uint32_t>() + 1, sizeof rank, context.cuda_stream);
  return rank;
}

std::uint32_t* DeviceStatus::reason_word(const ExecutionContext& context) {
  std::uint32_t* own = words_.as<std::uint32_t>() + 2;
  cuda::fill_bytes_async(own, 0xff, sizeof *own, context.cuda_stream);
  return own;
}

std::uint32_t DeviceStatus::reason_after(const ExecutionContext& context) const {
  std::uint32_t reason = 0xffffffffu;
  cuda::copy_to_host_sync(&reason, words_.as<std::uint32_t>() + 2, sizeof reason, context.cuda_stream);
  return reason;
}

}  // namespace gradcomm::detail

#endif

namespace gradcomm::detail {

void throw_without_cuda(const char* compressor, int rank) {
  GRADCOMM_THROW(ErrorCode::kUnsupported, compressor, "::setup on rank ", rank,
                 ": a layer lives on a CUDA device (LayerSpec::device), but gradcomm was built without CUDA "
                 "(configure with GRADCOMM_WITH_CUDA=ON)");
}

}  // namespace gradcomm::detail
