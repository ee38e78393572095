// What the GPU tests share: device arrays that copy to and from host vectors, the
// comparison of bits, a non-blocking stream (the kind a training loop gives), and the
// device words of an ExecutionContext.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "gradcomm/compressor.h"
#include "gradcomm/layer.h"

namespace gradcomm::testing {

#define GPU_OK(call) ASSERT_EQ((call), cudaSuccess) << #call

template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(std::size_t n) : count_(n) {
    EXPECT_EQ(cudaMalloc(&ptr_, std::max<std::size_t>(n, 1) * sizeof(T)), cudaSuccess);
    EXPECT_EQ(cudaMemset(ptr_, 0, std::max<std::size_t>(n, 1) * sizeof(T)), cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) { upload(host); }
  ~DeviceArray() { cudaFree(ptr_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  T* get() const { return ptr_; }
  std::size_t size() const { return count_; }
  void upload(const std::vector<T>& host) {
    ASSERT_EQ(host.size(), count_);
    EXPECT_EQ(cudaMemcpy(ptr_, host.data(), count_ * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  std::vector<T> download() const {
    std::vector<T> host(count_);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(host.data(), ptr_, count_ * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return host;
  }
  TensorView view(DType dtype) const { return TensorView(ptr_, count_ * sizeof(T) / dtype_size(dtype), dtype, Device::kCuda); }

 private:
  T* ptr_ = nullptr;
  std::size_t count_ = 0;
};

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}
template <typename A, typename B>
bool same_bits(const A& a, const B& b) {
  return a.size() == b.size() && (a.size() == 0 || std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])) == 0);
}

// The same layers, on CUDA device 0.
inline std::vector<LayerSpec> on_cuda(std::vector<LayerSpec> layers) {
  for (LayerSpec& l : layers) {
    l.device = Device::kCuda;
    l.device_index = 0;
  }
  return layers;
}

// A non-blocking stream, and the step's device words (zeroed / set to "no corrupt rank").
class StepContext {
 public:
  explicit StepContext(std::size_t layers) : counts_(layers), corrupt_(layers) {
    EXPECT_EQ(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), cudaSuccess);
    reset();
  }
  ~StepContext() { cudaStreamDestroy(stream_); }
  StepContext(const StepContext&) = delete;
  StepContext& operator=(const StepContext&) = delete;

  void reset() {
    EXPECT_EQ(cudaMemset(counts_.get(), 0, counts_.size() * sizeof(std::uint32_t)), cudaSuccess);
    EXPECT_EQ(cudaMemset(corrupt_.get(), 0xff, corrupt_.size() * sizeof(std::uint32_t)), cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }
  // With the device words (the StepEngine's way), or without (the fallbacks).
  ExecutionContext with_words() const { return {stream_, counts_.get(), corrupt_.get()}; }
  ExecutionContext stream_only() const { return {stream_, nullptr, nullptr}; }
  cudaStream_t stream() const { return stream_; }
  std::vector<std::uint32_t> counts() const {
    EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
    return counts_.download();
  }
  std::vector<std::uint32_t> corrupt() const {
    EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
    return corrupt_.download();
  }

 private:
  cudaStream_t stream_ = nullptr;
  DeviceArray<std::uint32_t> counts_, corrupt_;
};

}  // namespace gradcomm::testing
