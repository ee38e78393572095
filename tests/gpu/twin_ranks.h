// p simulated ranks twice over: one compressor per rank with its layers on the CPU, one
// with the same layers on CUDA device 0, fed the same gradients. A step encodes every
// layer on every rank, runs the collective on the host (allgather: the payloads in rank
// order; allreduce: the float32 sum in rank order), decodes on every rank, and checks
// that each CUDA twin produced bitwise the CPU's payload, non-finite count and update.
// And check_captured_steps: a step of CUDA layers that neither waits nor allocates.
#pragma once

#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "gaussian_values.h"
#include "gpu_test_util.h"
#include "gradcomm/compressor.h"

namespace gradcomm::testing {

template <typename C>
class TwinRanks {
 public:
  using Gradient = std::function<std::vector<float>(int rank, std::size_t layer, int step)>;

  // `host_layers`: layers the device twin keeps on the CPU (a compressor may mix them).
  TwinRanks(const std::vector<LayerSpec>& layers, int ranks, const std::function<std::unique_ptr<C>()>& make,
            std::vector<std::size_t> host_layers = {})
      : layers_(layers), ranks_(ranks), context_(layers.size()), on_device_(layers.size(), true) {
    std::vector<LayerSpec> device_layers = on_cuda(layers);
    for (std::size_t l : host_layers) {
      device_layers.at(l) = layers[l];
      on_device_[l] = false;
    }
    for (int r = 0; r < ranks; ++r) {
      cpu_.push_back(make());
      gpu_.push_back(make());
      cpu_.back()->setup(layers, ranks, r);
      gpu_.back()->setup(device_layers, ranks, r);
    }
  }

  C& cpu(int rank) { return *cpu_[static_cast<std::size_t>(rank)]; }
  C& gpu(int rank) { return *gpu_[static_cast<std::size_t>(rank)]; }
  StepContext& context() { return context_; }

  // One step; `skip`: every rank then calls on_step_skipped for every layer. With
  // `device_words` the CUDA twins report through the ExecutionContext's arrays (checked
  // here), else through their fallbacks (encode returns the count).
  void step(int step, const Gradient& gradient, bool device_words, bool skip = false) {
    context_.reset();
    const ExecutionContext execution = device_words ? context_.with_words() : context_.stream_only();
    for (int r = 0; r < ranks_; ++r) {
      cpu(r).set_step(step);
      gpu(r).set_step(step);
      gpu(r).set_execution(execution);
    }
    // Every rank's encode adds to the same word of the array here: the ranks' sum.
    std::vector<std::size_t> host_counts(layers_.size(), 0);
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      const auto where = [&](int r) {
        return ::testing::Message() << "step " << step << " layer " << l << " rank " << r;
      };
      const LayerWire wire = cpu(0).wire(l);
      ASSERT_EQ(gpu(0).wire(l).bytes(), wire.bytes());
      const bool dev = on_device_[l];
      std::vector<std::vector<std::uint8_t>> payloads;
      std::vector<std::unique_ptr<Buffer>> twin_payloads;
      for (int r = 0; r < ranks_; ++r) {
        std::vector<float> g = gradient(r, l, step);
        std::vector<std::uint8_t> payload(wire.bytes());
        const EncodeResult host = cpu(r).encode(l, TensorView::of(std::span<float>(g)),
                                                TensorView(payload.data(), wire.count, wire.dtype));
        Buffer twin_grad(dev, g.size() * sizeof(float));
        twin_grad.upload(g.data());
        auto twin_payload = std::make_unique<Buffer>(dev, std::max<std::size_t>(wire.bytes(), 8));
        const EncodeResult device = gpu(r).encode(l, twin_grad.view(g.size(), DType::kFloat32),
                                                  twin_payload->view(wire.count, wire.dtype));
        if (device_words && dev) {
          EXPECT_EQ(device.nonfinite, 0u) << where(r);
          host_counts[l] += host.nonfinite;
        } else {
          EXPECT_EQ(device.nonfinite, host.nonfinite) << where(r);
        }
        std::vector<std::uint8_t> got = twin_payload->bytes();
        got.resize(wire.bytes());
        ASSERT_EQ(got, payload) << "payload, " << where(r);
        payloads.push_back(std::move(payload));
        twin_payloads.push_back(std::move(twin_payload));
      }
      if (state_check_) state_check_(l, step);
      // The collective, on the host.
      std::vector<std::uint8_t> received;
      if (wire.collective == Collective::kAllgather) {
        for (const auto& p : payloads) received.insert(received.end(), p.begin(), p.end());
      } else {
        ASSERT_EQ(wire.dtype, DType::kFloat32) << "the host sums float32 payloads only";
        std::vector<float> sum(wire.count, 0.0f);
        for (const auto& p : payloads) {
          const auto* x = reinterpret_cast<const float*>(p.data());
          for (std::size_t i = 0; i < wire.count; ++i) sum[i] += x[i];
        }
        received.resize(wire.bytes());
        std::memcpy(received.data(), sum.data(), wire.bytes());
      }
      const std::size_t received_count = wire.collective == Collective::kAllgather
                                             ? received.size()
                                             : wire.count;
      Buffer twin_received(dev, received.size());
      twin_received.upload(received.data());
      for (int r = 0; r < ranks_; ++r) {
        std::vector<float> out(layers_[l].numel, 7.0f);
        cpu(r).decode(l, TensorView(received.data(), received_count, wire.dtype), TensorView::of(std::span<float>(out)));
        Buffer twin_out(dev, out.size() * sizeof(float));
        gpu(r).decode(l, twin_received.view(received_count, wire.dtype), twin_out.view(out.size(), DType::kFloat32));
        std::vector<std::uint8_t> got = twin_out.bytes();
        ASSERT_EQ(std::memcmp(got.data(), out.data(), got.size()), 0) << "update, " << where(r);
      }
      if (skip) {
        for (int r = 0; r < ranks_; ++r) {
          std::vector<std::uint8_t>& own = payloads[static_cast<std::size_t>(r)];
          cpu(r).on_step_skipped(l, TensorView(own.data(), wire.count, wire.dtype));
          gpu(r).on_step_skipped(l, twin_payloads[static_cast<std::size_t>(r)]->view(wire.count, wire.dtype));
        }
        if (state_check_) state_check_(l, step);
      }
    }
    if (device_words) {
      const std::vector<std::uint32_t> counts = context_.counts();
      for (std::size_t l = 0; l < layers_.size(); ++l) {
        EXPECT_EQ(counts[l], host_counts[l]) << "non-finite count of layer " << l << ", step " << step;
      }
    }
  }

  // Called after every layer's encodes (and after on_step_skipped): compare state.
  void on_state(std::function<void(std::size_t layer, int step)> check) { state_check_ = std::move(check); }

 private:
  // Bytes on the device, or on the host for a layer the device twin keeps there.
  class Buffer {
   public:
    Buffer(bool on_device, std::size_t bytes) : host_(bytes) {
      if (on_device) device_ = std::make_unique<DeviceArray<std::uint8_t>>(bytes);
    }
    void upload(const void* data) {
      if (!host_.empty()) std::memcpy(host_.data(), data, host_.size());
      if (device_) device_->upload(host_);
    }
    TensorView view(std::size_t count, DType dtype) {
      if (device_) return TensorView(device_->get(), count, dtype, Device::kCuda);
      return TensorView(host_.data(), count, dtype);
    }
    std::vector<std::uint8_t> bytes() const { return device_ ? device_->download() : host_; }

   private:
    std::vector<std::uint8_t> host_;
    std::unique_ptr<DeviceArray<std::uint8_t>> device_;
  };

  std::vector<LayerSpec> layers_;
  int ranks_;
  std::vector<std::unique_ptr<C>> cpu_, gpu_;
  StepContext context_;
  std::function<void(std::size_t, int)> state_check_;
  std::vector<bool> on_device_;
};

// A steady-state step of CUDA layers enqueues work only: no host synchronisation and no
// allocation, either of which invalidates a CUDA graph capture in global mode. One rank
// (its payload is the collective's result), three steps, the last captured and then
// launched; every step's payload and update equal the CPU twin's.
template <typename C>
void check_captured_steps(const std::vector<LayerSpec>& layers, const std::function<std::unique_ptr<C>()>& make) {
  std::unique_ptr<C> cpu = make(), gpu = make();
  cpu->setup(layers, 1, 0);
  gpu->setup(on_cuda(layers), 1, 0);
  StepContext context(layers.size());
  gpu->set_execution(context.with_words());
  std::vector<std::unique_ptr<DeviceArray<float>>> grads, outs;
  std::vector<std::unique_ptr<DeviceArray<std::uint8_t>>> payloads;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    grads.push_back(std::make_unique<DeviceArray<float>>(layers[l].numel));
    outs.push_back(std::make_unique<DeviceArray<float>>(layers[l].numel));
    payloads.push_back(std::make_unique<DeviceArray<std::uint8_t>>(gpu->max_payload_bytes(l)));
  }
  for (int step = 0; step < 3; ++step) {
    cpu->set_step(step);
    gpu->set_step(step);
    const bool capture = step == 2;  // the first steps loaded every kernel
    for (std::size_t l = 0; l < layers.size(); ++l) grads[l]->upload(gaussian_values(layers[l].numel, 50 + step));
    if (capture) GPU_OK(cudaStreamBeginCapture(context.stream(), cudaStreamCaptureModeGlobal));
    for (std::size_t l = 0; l < layers.size(); ++l) {
      const LayerWire w = gpu->wire(l);
      const TensorView payload(payloads[l]->get(), w.count, w.dtype, Device::kCuda);
      EXPECT_EQ(gpu->encode(l, grads[l]->view(DType::kFloat32), payload).nonfinite, 0u);
      gpu->decode(l, payload, outs[l]->view(DType::kFloat32));
    }
    if (capture) {
      cudaGraph_t graph = nullptr;
      GPU_OK(cudaStreamEndCapture(context.stream(), &graph));
      cudaGraphExec_t exec = nullptr;
      GPU_OK(cudaGraphInstantiate(&exec, graph, 0));
      GPU_OK(cudaGraphLaunch(exec, context.stream()));
      GPU_OK(cudaStreamSynchronize(context.stream()));
      cudaGraphExecDestroy(exec);
      cudaGraphDestroy(graph);
    }
    for (std::size_t l = 0; l < layers.size(); ++l) {
      const LayerWire w = cpu->wire(l);
      std::vector<float> g = gaussian_values(layers[l].numel, 50 + step);
      std::vector<std::uint8_t> payload(w.bytes());
      cpu->encode(l, TensorView::of(std::span<float>(g)), TensorView(payload.data(), w.count, w.dtype));
      std::vector<float> out(layers[l].numel);
      cpu->decode(l, TensorView(payload.data(), w.count, w.dtype), TensorView::of(std::span<float>(out)));
      std::vector<std::uint8_t> got = payloads[l]->download();
      got.resize(w.bytes());
      EXPECT_EQ(got, payload) << "layer " << l << " step " << step;
      EXPECT_TRUE(same_bits(outs[l]->download(), out)) << "layer " << l << " step " << step;
    }
  }
}

}  // namespace gradcomm::testing
