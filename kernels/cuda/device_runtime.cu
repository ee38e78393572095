#include <cuda_runtime.h>

#include "gradcomm/error.h"
#include "kernels/cuda/device_runtime.cuh"

namespace gradcomm::kernels::cuda {
namespace {

void check(cudaError_t status, const char* call) {
  GRADCOMM_CHECK(status == cudaSuccess, ErrorCode::kCuda, call, ": ", cudaGetErrorString(status));
}

cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

}  // namespace

DeviceGuard::DeviceGuard(int device) {
  check(cudaGetDevice(&previous_), "cudaGetDevice");
  if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
}

DeviceGuard::~DeviceGuard() {
  int now = -1;
  if (cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
}

int device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return count;
}

void* device_alloc(std::size_t bytes) {
  void* ptr = nullptr;
  if (bytes > 0) check(cudaMalloc(&ptr, bytes), "cudaMalloc");
  return ptr;
}

void device_free(void* ptr) noexcept {
  if (ptr) cudaFree(ptr);
}

void* pinned_alloc(std::size_t bytes) {
  void* ptr = nullptr;
  if (bytes > 0) check(cudaMallocHost(&ptr, bytes), "cudaMallocHost");
  return ptr;
}

void pinned_free(void* ptr) noexcept {
  if (ptr) cudaFreeHost(ptr);
}

void fill_zero_async(void* ptr, std::size_t bytes, void* stream) {
  if (bytes > 0) check(cudaMemsetAsync(ptr, 0, bytes, as_stream(stream)), "cudaMemsetAsync");
}

void copy_async(void* dst, const void* src, std::size_t bytes, void* stream) {
  if (bytes > 0) check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, as_stream(stream)), "cudaMemcpyAsync");
}

void copy_rows_async(void* dst, std::size_t dst_pitch, const void* src, std::size_t src_pitch,
                     std::size_t width, std::size_t rows, void* stream) {
  if (width == 0 || rows == 0) return;
  check(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, rows, cudaMemcpyDefault,
                          as_stream(stream)),
        "cudaMemcpy2DAsync");
}

void synchronize(void* stream) { check(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize"); }

void* event_create() {
  cudaEvent_t event = nullptr;
  check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreateWithFlags");
  return event;
}

void event_destroy(void* event) noexcept {
  if (event) cudaEventDestroy(static_cast<cudaEvent_t>(event));
}

void event_record(void* event, void* stream) {
  check(cudaEventRecord(static_cast<cudaEvent_t>(event), as_stream(stream)), "cudaEventRecord");
}

void stream_wait(void* stream, void* event) {
  check(cudaStreamWaitEvent(as_stream(stream), static_cast<cudaEvent_t>(event), 0), "cudaStreamWaitEvent");
}

}  // namespace gradcomm::kernels::cuda
