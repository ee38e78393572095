// The CUDA kernels of the 1-bit compressed allreduce against the CPU kernels: signs and
// the server sums bitwise, scales to 1e-6 relative (the norm's summation order differs),
// errors bitwise once computed with the same scale; the whole compressed_allreduce on one
// rank on either device (a loopback communicator), its scale checks; and the device
// error state's save/load, ordered on the stream it was given.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <memory>
#include <string>
#include <vector>

#include "gradcomm/onebit.h"
#include "kernels/cpu/onebit_kernels.h"
#include "kernels/cuda/device_buffer.cuh"
#include "kernels/cuda/onebit_kernels.cuh"
#include "kernels/shared/onebit_math.h"

namespace gradcomm {
namespace {

namespace gpu = kernels::cuda;

template <typename T>
struct DeviceArray {
  T* ptr = nullptr;
  std::size_t count = 0;
  explicit DeviceArray(std::size_t n) : count(n) {
    ptr = static_cast<T*>(gpu::allocate_zeroed(std::max<std::size_t>(n, 1) * sizeof(T), gpu::current_device()));
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) {
    if (count) gpu::copy_to_device_sync(ptr, host.data(), count * sizeof(T), nullptr);
  }
  ~DeviceArray() { gpu::free_device(ptr); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  std::vector<T> host() const {
    std::vector<T> out(count);
    if (count) gpu::copy_to_host_sync(out.data(), ptr, count * sizeof(T), nullptr);
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
  const std::size_t stride = kernels::onebit::segment_bytes(padded, p);
  std::vector<float> x = random_floats(n, 1), err = random_floats(padded, 2, 0.1f);
  x[17] = std::nanf("");
  DeviceArray<float> dx(x), derr(err);
  DeviceArray<std::uint8_t> dsend(p * stride), scratch(gpu::onebit_scratch_bytes());
  DeviceArray<std::uint32_t> nonfinite(1);
  gpu::onebit_worker_compress(dx.ptr, n, derr.ptr, padded, p, dsend.ptr, stride, scratch.ptr, nonfinite.ptr,
                              nullptr);
  EXPECT_EQ(nonfinite.host()[0], 1u);
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
  const std::size_t stride = kernels::onebit::segment_bytes(chunk * p, p);
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
  DeviceArray<std::uint32_t> bad(1);
  gpu::onebit_server_compress(dseg.ptr, stride, p, des.ptr, chunk, dout.ptr, scratch.ptr, bad.ptr, nullptr);
  gpu::synchronize(nullptr);
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
  gpu::onebit_decode(dseg.ptr, stride, chunk, dresult.ptr, n, bad.ptr, nullptr);
  gpu::synchronize(nullptr);
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

// One rank: every collective hands the send buffer over as it is, on the host or the
// device, like any communicator of one rank.
class LoopbackCommunicator final : public Communicator {
 public:
  explicit LoopbackCommunicator(Device device) : device_(device) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  Device device() const override { return device_; }
  std::string describe() const override { return "loopback"; }
  WorkHandle allreduce(TensorView send, TensorView recv, ReduceOp) override { return copy(send, recv); }
  WorkHandle allgather(TensorView send, TensorView recv) override { return copy(send, recv); }
  WorkHandle allgatherv(TensorView send, TensorView recv, std::span<const std::size_t>) override {
    return copy(send, recv);
  }
  WorkHandle alltoall(TensorView send, TensorView recv) override { return copy(send, recv); }
  WorkHandle alltoallv(TensorView send, std::span<const std::size_t>, TensorView recv,
                       std::span<const std::size_t>) override {
    return copy(send, recv);
  }
  WorkHandle broadcast(TensorView, int) override { return done(); }
  WorkHandle barrier() override { return done(); }
  void abort(const std::string&) override {}

 private:
  struct Done final : Work {
    void wait() override {}
    bool test() override { return true; }
  };
  static WorkHandle done() { return WorkHandle(new Done); }
  WorkHandle copy(TensorView send, TensorView recv) {
    EXPECT_EQ(send.nbytes(), recv.nbytes());
    if (send.data() != recv.data() && send.nbytes() != 0) {
      EXPECT_EQ(cudaMemcpy(recv.data(), send.data(), send.nbytes(), cudaMemcpyDefault), cudaSuccess);
    }
    return done();
  }
  Device device_;
};

TEST(OneBitCudaAllreduce, OneRankMatchesTheCpu) {
  const std::vector<std::size_t> numels = {100003, 0, 77};
  LoopbackCommunicator host(Device::kCpu), device(Device::kCuda);
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  std::vector<OneBitErrorState> cpu_states, gpu_states;
  for (std::size_t n : numels) {
    cpu_states.emplace_back(n, 1);
    gpu_states.emplace_back(n, 1, Device::kCuda, stream);
  }
  std::vector<std::uint8_t> cpu_ws(onebit_workspace_bytes(numels, 1));
  DeviceArray<std::uint8_t> gpu_ws(onebit_workspace_bytes(numels, 1, Device::kCuda));
  for (int step = 0; step < 3; ++step) {
    // The scales differ in their last bits (another summation order), and so would the
    // errors fed back: each step starts both from the GPU's errors.
    for (std::size_t t = 0; t < numels.size(); ++t) cpu_states[t].load(gpu_states[t].save());
    std::vector<std::vector<float>> xs, outs;
    std::vector<std::unique_ptr<DeviceArray<float>>> dxs, douts;
    std::vector<TensorView> cx, co, gx, go;
    for (std::size_t t = 0; t < numels.size(); ++t) {
      xs.push_back(random_floats(numels[t], 10 * step + t));
      if (step == 1 && numels[t] > 10) xs.back()[4] = std::nanf("");
      outs.emplace_back(numels[t]);
      dxs.push_back(std::make_unique<DeviceArray<float>>(xs.back()));
      douts.push_back(std::make_unique<DeviceArray<float>>(numels[t]));
      cx.push_back(TensorView::of(std::span<float>(xs.back())));
      co.push_back(TensorView::of(std::span<float>(outs.back())));
      gx.push_back(TensorView(dxs.back()->ptr, numels[t], DType::kFloat32, Device::kCuda));
      go.push_back(TensorView(douts.back()->ptr, numels[t], DType::kFloat32, Device::kCuda));
    }
    std::vector<OneBitErrorState*> cs, gs;
    for (auto& s : cpu_states) cs.push_back(&s);
    for (auto& s : gpu_states) gs.push_back(&s);
    const OneBitResult want = compressed_allreduce(host, cx, cs, co, TensorView::of(std::span<std::uint8_t>(cpu_ws)));
    const OneBitResult got = compressed_allreduce(device, gx, gs, go,
                                                  TensorView(gpu_ws.ptr, gpu_ws.count, DType::kUInt8, Device::kCuda),
                                                  stream);
    EXPECT_EQ(got.nonfinite, want.nonfinite) << "step " << step;
    for (std::size_t t = 0; t < numels.size(); ++t) {
      const std::vector<float> g = douts[t]->host();
      for (std::size_t i = 0; i < g.size(); ++i) {
        ASSERT_EQ(g[i] >= 0.0f, outs[t][i] >= 0.0f) << "sign, tensor " << t << " element " << i << " step " << step;
        ASSERT_NEAR(g[i], outs[t][i], 1e-6f * std::fabs(outs[t][i])) << "tensor " << t << " step " << step;
      }
    }
  }
  // A scale that overflowed float: both devices refuse it alike, before the server error
  // moves.
  std::vector<float> huge(numels[0], 3.0e38f);
  std::vector<std::byte> blob = cpu_states[0].save();
  for (OneBitErrorState* s : {&cpu_states[0], &gpu_states[0]}) {
    std::vector<float> ew(s->padded_numel(), 3.0e38f);
    std::vector<std::byte> with = blob;
    std::memcpy(with.data() + 32, ew.data(), ew.size() * sizeof(float));
    s->load(with);
  }
  const std::vector<std::byte> server_before = gpu_states[0].save();
  DeviceArray<float> dhuge(huge), dout(numels[0]);
  std::vector<float> out(numels[0]);
  std::string cpu_error, gpu_error;
  try {
    compressed_allreduce(host, TensorView::of(std::span<float>(huge)), cpu_states[0], TensorView::of(std::span<float>(out)),
                         TensorView::of(std::span<std::uint8_t>(cpu_ws)));
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNonFinite);
    cpu_error = e.message();
  }
  try {
    compressed_allreduce(device, TensorView(dhuge.ptr, huge.size(), DType::kFloat32, Device::kCuda), gpu_states[0],
                         TensorView(dout.ptr, huge.size(), DType::kFloat32, Device::kCuda),
                         TensorView(gpu_ws.ptr, gpu_ws.count, DType::kUInt8, Device::kCuda), stream);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNonFinite);
    gpu_error = e.message();
  }
  EXPECT_FALSE(cpu_error.empty());
  EXPECT_EQ(gpu_error, cpu_error);
  const std::vector<std::byte> server_after = gpu_states[0].save();
  const std::size_t server_at = 32 + gpu_states[0].padded_numel() * sizeof(float);
  EXPECT_TRUE(std::equal(server_before.begin() + server_at, server_before.end(), server_after.begin() + server_at))
      << "the server error moved past a bad scale";
  gpu_states.clear();
  cudaStreamDestroy(stream);
}

// Issue 13 fault 7: zero() ran on the legacy stream, unordered against a non-blocking
// stream still writing the errors; it must run after the work queued before it there.
TEST(OneBitCudaState, ZeroIsOrderedAfterTheStreamsWork) {
  const std::size_t n = std::size_t{1} << 26;
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  {
    OneBitErrorState state(n, 1, Device::kCuda, stream);
    DeviceArray<float> x(random_floats(n, 9));
    DeviceArray<std::uint8_t> out(kernels::onebit::segment_bytes(state.padded_numel(), 1));
    DeviceArray<std::uint8_t> scratch(gpu::onebit_scratch_bytes());
    DeviceArray<std::uint32_t> nonfinite(1);
    gpu::onebit_worker_compress(x.ptr, n, static_cast<float*>(state.worker_error().data()), state.padded_numel(), 1,
                                out.ptr, out.count, scratch.ptr, nonfinite.ptr, stream);
    state.zero();  // queued behind the compress on `stream`
    const std::vector<std::byte> blob = state.save();
    for (std::size_t i = 32; i < blob.size(); ++i) ASSERT_EQ(blob[i], std::byte{0}) << "byte " << i;
  }
  cudaStreamDestroy(stream);
}

TEST(OneBitCudaState, DeviceStateSavesAndLoadsExactly) {
  OneBitErrorState state(1001, 4, Device::kCuda);
  const std::vector<float> ew = random_floats(state.padded_numel(), 5);
  const std::vector<float> es = random_floats(state.chunk_numel(), 6);
  gpu::copy_to_device_sync(state.worker_error().data(), ew.data(), ew.size() * sizeof(float), nullptr);
  gpu::copy_to_device_sync(state.server_error().data(), es.data(), es.size() * sizeof(float), nullptr);
  const std::vector<std::byte> blob = state.save();
  OneBitErrorState copy(1001, 4, Device::kCuda), host(1001, 4);
  copy.load(blob);
  host.load(blob);
  EXPECT_EQ(copy.save(), blob);
  EXPECT_EQ(host.save(), blob);  // the format does not depend on the device
}

}  // namespace
}  // namespace gradcomm
