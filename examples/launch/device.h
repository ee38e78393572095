// --device cuda for gradcomm's programs: each rank takes its local GPU, and the program's
// own arithmetic (which runs on the host) hands its gradients to the Exchanger through
// buffers on that GPU, so the compressors, the framing and the collectives all run on the
// device, as they do for a GPU trainer.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "gradcomm/communicator.h"
#include "gradcomm/mpi_communicator.h"
#include "gradcomm/tensor.h"

namespace launch {

struct RankDevice {
  gradcomm::Device device = gradcomm::Device::kCpu;
  int index = 0;
  std::string description;  // "cpu", or which GPU this rank took and why
};

// `name` is "cpu" or "cuda" (the flag's checked value). For cuda: the local rank's GPU
// (OMPI_COMM_WORLD_LOCAL_RANK or LOCAL_RANK modulo the devices), made current. Throws
// gradcomm::Error when gradcomm was built without CUDA or no device is visible.
RankDevice take_device(const std::string& name);

// The communicator CUDA layers are exchanged over: NCCL, bootstrapped from `mpi`, where
// gradcomm was built with it; else nullptr, and `mpi` stages device buffers through
// pinned host memory. `transport` receives a short name for the logs.
std::unique_ptr<gradcomm::Communicator> device_communicator(gradcomm::MpiCommunicator& mpi,
                                                            const RankDevice& device,
                                                            std::chrono::milliseconds timeout,
                                                            std::string& transport);

// One float32 buffer per tensor on the rank's GPU (allocated once), and synchronous
// copies to and from the host's tensors.
class DeviceMirror {
 public:
  DeviceMirror() = default;
  DeviceMirror(const RankDevice& device, std::span<const std::size_t> sizes);
  ~DeviceMirror();
  DeviceMirror(const DeviceMirror&) = delete;
  DeviceMirror& operator=(const DeviceMirror&) = delete;

  bool active() const noexcept { return !buffers_.empty(); }
  gradcomm::TensorView view(std::size_t tensor) const;
  void upload(std::size_t tensor, const float* host);
  void download(std::size_t tensor, float* host);

 private:
  RankDevice device_;
  std::vector<std::size_t> sizes_;
  std::vector<float*> buffers_;
};

}  // namespace launch
