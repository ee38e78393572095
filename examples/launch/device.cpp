#include "launch/device.h"

#include "gradcomm/error.h"
#include "gradcomm/local_device.h"
#if defined(GRADCOMM_HAVE_NCCL)
#include "gradcomm/nccl_communicator.h"
#endif
#if defined(GRADCOMM_HAVE_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace launch {

namespace {

#if defined(GRADCOMM_HAVE_CUDA)
void cuda_ok(cudaError_t status, const char* what) {
  GRADCOMM_CHECK(status == cudaSuccess, gradcomm::ErrorCode::kCuda, what, ": ", cudaGetErrorString(status));
}
#endif

}  // namespace

RankDevice take_device(const std::string& name) {
  RankDevice d;
  if (name != "cuda") {
    d.description = "cpu";
    return d;
  }
  const gradcomm::LocalDevice local = gradcomm::local_cuda_device();
  d.device = gradcomm::Device::kCuda;
  d.index = local.device;
  d.description = local.describe();
  return d;
}

std::unique_ptr<gradcomm::Communicator> device_communicator(gradcomm::MpiCommunicator& mpi,
                                                            const RankDevice& device,
                                                            std::chrono::milliseconds timeout,
                                                            std::string& transport) {
  if (device.device == gradcomm::Device::kCpu) {
    transport = "mpi";
    return nullptr;
  }
#if defined(GRADCOMM_HAVE_NCCL)
  gradcomm::NcclCommunicatorOptions options;
  options.device = device.index;
  if (timeout.count() > 0) options.timeout = timeout;
  transport = "nccl";
  return std::make_unique<gradcomm::NcclCommunicator>(mpi, options);
#else
  (void)timeout;
  mpi.set_cuda_stream(nullptr, device.index);
  transport = "mpi (device buffers staged through pinned host memory)";
  return nullptr;
#endif
}

DeviceMirror::DeviceMirror(const RankDevice& device, std::span<const std::size_t> sizes)
    : device_(device), sizes_(sizes.begin(), sizes.end()) {
  if (device.device == gradcomm::Device::kCpu) return;
#if defined(GRADCOMM_HAVE_CUDA)
  cuda_ok(cudaSetDevice(device.index), "DeviceMirror: cudaSetDevice");
  for (std::size_t n : sizes_) {
    void* p = nullptr;
    cuda_ok(cudaMalloc(&p, n * sizeof(float) + (n == 0 ? 4 : 0)), "DeviceMirror: cudaMalloc");
    buffers_.push_back(static_cast<float*>(p));
  }
#else
  GRADCOMM_THROW(gradcomm::ErrorCode::kUnsupported, "--device cuda: gradcomm was built without CUDA");
#endif
}

DeviceMirror::~DeviceMirror() {
#if defined(GRADCOMM_HAVE_CUDA)
  for (float* p : buffers_) cudaFree(p);
#endif
}

gradcomm::TensorView DeviceMirror::view(std::size_t tensor) const {
  return gradcomm::TensorView(buffers_.at(tensor), sizes_.at(tensor), gradcomm::DType::kFloat32, device_.device,
                              device_.index);
}

void DeviceMirror::upload(std::size_t tensor, const float* host) {
#if defined(GRADCOMM_HAVE_CUDA)
  cuda_ok(cudaMemcpy(buffers_.at(tensor), host, sizes_.at(tensor) * sizeof(float), cudaMemcpyHostToDevice),
          "DeviceMirror: copy to the device");
#else
  (void)tensor;
  (void)host;
#endif
}

void DeviceMirror::download(std::size_t tensor, float* host) {
#if defined(GRADCOMM_HAVE_CUDA)
  cuda_ok(cudaMemcpy(host, buffers_.at(tensor), sizes_.at(tensor) * sizeof(float), cudaMemcpyDeviceToHost),
          "DeviceMirror: copy to the host");
#else
  (void)tensor;
  (void)host;
#endif
}

}  // namespace launch
