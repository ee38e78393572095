// For the MPI tests on CUDA buffers (NCCL, staged MPI): whether every rank has a device,
// and device copies of host vectors, freed with the object. Include only where
// GRADCOMM_HAVE_CUDA is defined.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

namespace gradcomm::testing {

inline bool have_cuda_device() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

class DeviceBuffers {
 public:
  DeviceBuffers() = default;
  DeviceBuffers(const DeviceBuffers&) = delete;
  DeviceBuffers& operator=(const DeviceBuffers&) = delete;
  ~DeviceBuffers() {
    for (void* p : owned_) cudaFree(p);
  }

  template <typename T>
  T* copy(const std::vector<T>& host) {
    T* ptr = nullptr;
    EXPECT_EQ(cudaMalloc(&ptr, std::max<std::size_t>(1, host.size()) * sizeof(T)), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
              cudaSuccess);
    owned_.push_back(ptr);
    return ptr;
  }
  template <typename T>
  static std::vector<T> to_host(const T* ptr, std::size_t n) {
    std::vector<T> host(n);
    EXPECT_EQ(cudaMemcpy(host.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return host;
  }

 private:
  std::vector<void*> owned_;
};

}  // namespace gradcomm::testing
