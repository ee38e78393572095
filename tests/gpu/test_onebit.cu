// The CUDA kernels of the 1-bit compressed allreduce against the CPU kernels: signs and
// the server sums bitwise, scales to 1e-6 relative (the norm's summation order differs),
// errors bitwise once computed with the same scale; and the device error state's
// save/load.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gradcomm/onebit.h"
#include "kernels/cpu/onebit_kernels.h"
#include "kernels/cuda/onebit_kernels.cuh"

namespace gradcomm {
namespace {

namespace gpu = kernels::cuda;

template <typename T>
struct DeviceArray {
  T* ptr = nullptr;
  std::size_t count = 0;
  explicit DeviceArray(std::size_t n) : count(n) {
    ptr = static_cast<T*>(gpu::onebit_device_alloc(std::max<std::size_t>(n, 1) * sizeof(T)));
    gpu::onebit_device_zero(ptr, std::max<std::size_t>(n, 1) * sizeof(T));
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) {
    if (count) gpu::onebit_copy_to_device(ptr, host.data(), count * sizeof(T));
  }
  ~DeviceArray() { gpu::onebit_device_free(ptr); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  std::vector<T> host() const {
    std::vector<T> out(count);
    if (count) gpu::onebit_copy_to_host(out.data(), ptr, count * sizeof(T));
    return out;
  }
};

std::vector<float> random_floats(std::size_t n, unsigned seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen) * scale;
  return v;
}

float scale_at(const std::vector<std::uint8_t>& bytes, std::size_t offset) {
  float s;
  std::memcpy(&s, bytes.data() + offset, sizeof s);
  return s;
}

void expect_scale_close(float gpu_scale, float cpu_scale, const char* what) {
  EXPECT_NEAR(gpu_scale, cpu_scale, 1e-6f * cpu_scale) << what;
}

class OneBitCuda : public ::testing::TestWithParam<int> {};

// The worker side for one tensor of odd length with a nonzero error and a NaN.
TEST_P(OneBitCuda, WorkerCompressMatchesCpu) {
  const int p = GetParam();
  const std::size_t n = 100003;
  const std::size_t padded = onebit_padded_numel(n, p), chunk = padded / p;
  const std::size_t stride = sizeof(float) + (chunk / 8 + 3) / 4 * 4;
  std::vector<float> x = random_floats(n, 1), err = random_floats(padded, 2, 0.1f);
  x[17] = std::nanf("");
  DeviceArray<float> dx(x), derr(err);
  DeviceArray<std::uint8_t> dsend(p * stride), scratch(gpu::onebit_scratch_bytes());
  gpu::onebit_worker_compress(dx.ptr, n, derr.ptr, padded, p, dsend.ptr, stride, scratch.ptr, nullptr);
  EXPECT_EQ(gpu::onebit_read_nonfinite(scratch.ptr, nullptr), 1u);
  const std::vector<std::uint8_t> send = dsend.host();
  const std::vector<float> gpu_err = derr.host();

  const kernels::SumSq norm = kernels::onebit_compensated_sumsq(x.data(), n, err.data(), padded);
  EXPECT_EQ(norm.nonfinite, 1u);
  const float cpu_scale = kernels::onebit_scale(norm.sumsq, padded);
  const float gpu_scale = scale_at(send, 0);
  expect_scale_close(gpu_scale, cpu_scale, "worker scale");
  // With the GPU's scale, the CPU kernel must give the same bits and errors bitwise.
  std::vector<float> cpu_err = err;
  for (int j = 0; j < p; ++j) {
    EXPECT_EQ(scale_at(send, j * stride), gpu_scale) << "the scale heads every chunk";
    std::vector<std::uint8_t> bits(chunk / 8);
    const std::size_t begin = j * chunk;
    const std::size_t valid = n > begin ? std::min(chunk, n - begin) : 0;
    kernels::onebit_pack_with_error(x.data() + begin, valid, cpu_err.data() + begin, chunk, gpu_scale,
                                    bits.data());
    ASSERT_EQ(0, std::memcmp(bits.data(), send.data() + j * stride + sizeof(float), bits.size()))
        << "chunk " << j;
  }
  EXPECT_EQ(gpu_err, cpu_err);
}

// The server side and the decode, fed the same segments.
TEST_P(OneBitCuda, ServerCompressAndDecodeMatchCpu) {
  const int p = GetParam();
  const std::size_t chunk = 8 * 1237;
  const std::size_t stride = sizeof(float) + (chunk / 8 + 3) / 4 * 4;
  std::vector<std::uint8_t> segments(p * stride);
  std::mt19937 gen(3);
  for (int r = 0; r < p; ++r) {
    const float s = 0.25f + 0.1f * r;
    std::memcpy(segments.data() + r * stride, &s, sizeof s);
    for (std::size_t b = 0; b < chunk / 8; ++b) segments[r * stride + sizeof(float) + b] = gen() & 0xff;
  }
  const std::vector<float> es = random_floats(chunk, 4, 0.05f);
  DeviceArray<std::uint8_t> dseg(segments), dout(stride), scratch(gpu::onebit_scratch_bytes());
  DeviceArray<float> des(es);
  gpu::onebit_server_compress(dseg.ptr, stride, p, des.ptr, chunk, dout.ptr, scratch.ptr, nullptr);
  gpu::onebit_synchronize(nullptr);
  const std::vector<std::uint8_t> out = dout.host();
  const std::vector<float> gpu_es = des.host();

  std::vector<float> cpu_es = es;
  const double sumsq = kernels::onebit_server_accumulate(segments.data(), stride, p, cpu_es.data(), chunk);
  const float gpu_scale = scale_at(out, 0);
  expect_scale_close(gpu_scale, kernels::onebit_scale(sumsq, chunk), "server scale");
  std::vector<std::uint8_t> bits(chunk / 8);
  kernels::onebit_pack_with_error(nullptr, 0, cpu_es.data(), chunk, gpu_scale, bits.data());
  EXPECT_EQ(0, std::memcmp(bits.data(), out.data() + sizeof(float), bits.size()));
  EXPECT_EQ(gpu_es, cpu_es);

  // Decode p gathered segments into an odd-length output.
  const std::size_t n = p * chunk - 5;
  DeviceArray<float> dresult(n);
  gpu::onebit_decode(dseg.ptr, stride, p, chunk, dresult.ptr, n, nullptr);
  gpu::onebit_synchronize(nullptr);
  const std::vector<float> got = dresult.host();
  std::vector<float> want(n);
  for (int j = 0; j < p; ++j) {
    const std::size_t count = std::min(chunk, n - j * chunk);
    kernels::onebit_unpack(segments.data() + j * stride + sizeof(float), scale_at(segments, j * stride),
                           want.data() + j * chunk, count);
  }
  EXPECT_EQ(got, want);
}

INSTANTIATE_TEST_SUITE_P(Ranks, OneBitCuda, ::testing::Values(1, 2, 3, 4, 8));

TEST(OneBitCudaState, DeviceStateSavesAndLoadsExactly) {
  OneBitErrorState state(1001, 4, Device::kCuda);
  const std::vector<float> ew = random_floats(state.padded_numel(), 5);
  const std::vector<float> es = random_floats(state.chunk_numel(), 6);
  gpu::onebit_copy_to_device(state.worker_error().data(), ew.data(), ew.size() * sizeof(float));
  gpu::onebit_copy_to_device(state.server_error().data(), es.data(), es.size() * sizeof(float));
  const std::vector<std::byte> blob = state.save();
  OneBitErrorState copy(1001, 4, Device::kCuda), host(1001, 4);
  copy.load(blob);
  host.load(blob);
  EXPECT_EQ(copy.save(), blob);
  EXPECT_EQ(host.save(), blob);  // the format does not depend on the device
}

}  // namespace
}  // namespace gradcomm
