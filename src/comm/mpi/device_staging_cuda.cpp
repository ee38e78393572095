// MpiCommunicator on CUDA buffers, for MPI builds that are not CUDA-aware: each CUDA view
// of a collective is staged through a pinned host buffer. stage() copies the inputs to
// the host on the caller's stream and waits for them (MPI reads the host copies as soon
// as the collective starts); the collective runs on the host copies; when its work
// completes, the outputs are copied back on the same stream, waited for, and the work
// reports completion. The staged works and their pinned buffers are pooled and only grow.
#include <algorithm>
#include <vector>

#include "comm/cuda_call.h"
#include "gradcomm/mpi_communicator.h"

namespace gradcomm {
namespace {

class StagedWork;

struct PinnedBuffer {
  void* data = nullptr;
  std::size_t bytes = 0;

  void reserve(std::size_t wanted) {
    if (wanted <= bytes) return;
    if (data) cudaFreeHost(data);
    data = nullptr;
    bytes = 0;
    GRADCOMM_CUDA_CALL(cudaHostAlloc(&data, wanted, cudaHostAllocDefault),
                       "MpiCommunicator: cudaHostAlloc of ", wanted,
                       " bytes to stage a CUDA buffer");
    bytes = wanted;
  }
  ~PinnedBuffer() {
    if (data) cudaFreeHost(data);
  }
};

}  // namespace

struct MpiCommunicator::Staging {
  cudaStream_t stream = nullptr;  // nullptr: the legacy default stream
  int device = 0;
  std::vector<StagedWork*> free;
  ~Staging();
};

namespace {

class StagedWork final : public Work {
 public:
  static constexpr int kBuffers = 2;  // a collective stages at most a send and a recv buffer
  struct Output {
    void* device = nullptr;
    const void* host = nullptr;
    std::size_t bytes = 0;
  };

  std::shared_ptr<MpiCommunicator::Staging> staging;  // set while handed out
  WorkHandle host;                                    // the collective on the host copies
  PinnedBuffer buffers[kBuffers];
  Output outputs[kBuffers];
  int output_count = 0;
  cudaEvent_t copied_back = nullptr;
  bool complete = false;

  ~StagedWork() override {
    if (copied_back) cudaEventDestroy(copied_back);
  }

  void wait() override {
    if (complete) return;
    host->wait();
    copy_back();
  }
  bool test() override {
    if (complete) return true;
    if (!host->test()) return false;
    copy_back();
    return true;
  }
  void release() noexcept override {
    if (host && !complete) {  // complete it, so the device buffers are written now or never
      try {
        wait();
      } catch (...) {
      }
    }
    host.reset();
    const std::shared_ptr<MpiCommunicator::Staging> owner = std::move(staging);
    try {
      owner->free.push_back(this);
    } catch (...) {
      delete this;
    }
  }

 private:
  void copy_back() {
    const MpiCommunicator::Staging& s = *staging;
    const detail::DeviceGuard guard(s.device);
    for (int i = 0; i < output_count; ++i) {
      GRADCOMM_CUDA_CALL(cudaMemcpyAsync(outputs[i].device, outputs[i].host, outputs[i].bytes,
                                         cudaMemcpyHostToDevice, s.stream),
                         "MpiCommunicator: copy of ", outputs[i].bytes,
                         " bytes back to cuda:", s.device);
    }
    if (!copied_back) {
      GRADCOMM_CUDA_CALL(cudaEventCreateWithFlags(&copied_back, cudaEventDisableTiming),
                         "MpiCommunicator: cudaEventCreate");
    }
    GRADCOMM_CUDA_CALL(cudaEventRecord(copied_back, s.stream), "MpiCommunicator: cudaEventRecord");
    GRADCOMM_CUDA_CALL(cudaEventSynchronize(copied_back),
                       "MpiCommunicator: waiting for the copies back to cuda:", s.device);
    complete = true;
  }
};

}  // namespace

MpiCommunicator::Staging::~Staging() {
  for (StagedWork* w : free) delete w;
}

void MpiCommunicator::set_cuda_stream(void* stream, int device) {
  if (!staging_) staging_ = std::make_shared<Staging>();
  if (device < 0)
    GRADCOMM_CUDA_CALL(cudaGetDevice(&device), "MpiCommunicator::set_cuda_stream: cudaGetDevice");
  staging_->stream = static_cast<cudaStream_t>(stream);
  staging_->device = device;
}

WorkHandle MpiCommunicator::stage(std::initializer_list<TensorView*> inputs,
                                  std::initializer_list<TensorView*> outputs) {
  if (!staging_) set_cuda_stream(nullptr, -1);
  Staging& s = *staging_;
  StagedWork* w;
  if (s.free.empty()) {
    w = new StagedWork();
  } else {
    w = s.free.back();
    s.free.pop_back();
  }
  w->staging = staging_;
  w->complete = false;
  w->output_count = 0;
  WorkHandle handle(w);
  const detail::DeviceGuard guard(s.device);
  // Each distinct CUDA buffer gets a host buffer; an output that is also an input (in
  // place, broadcast) shares its input's, so it is copied in and out.
  const void* staged_from[StagedWork::kBuffers] = {};
  int used = 0;
  auto host_copy_of = [&](const TensorView& v) -> void* {
    for (int i = 0; i < used; ++i) {
      if (staged_from[i] == v.data()) return w->buffers[i].data;
    }
    GRADCOMM_CHECK(used < StagedWork::kBuffers, ErrorCode::kInternal, "MpiCommunicator: more than ",
                   StagedWork::kBuffers, " CUDA buffers in one collective");
    w->buffers[used].reserve(v.nbytes());
    staged_from[used] = v.data();
    return w->buffers[used++].data;
  };
  bool copied_in = false;
  for (TensorView* v : inputs) {
    if (v->device() != Device::kCuda || v->numel() == 0) continue;
    void* host = host_copy_of(*v);
    GRADCOMM_CUDA_CALL(
        cudaMemcpyAsync(host, v->data(), v->nbytes(), cudaMemcpyDeviceToHost, s.stream),
        "MpiCommunicator on rank ", rank_, ": copy of ", v->describe(), " to a pinned host buffer");
    copied_in = true;
  }
  for (TensorView* v : outputs) {
    if (v->device() != Device::kCuda || v->numel() == 0) continue;
    w->outputs[w->output_count++] = {v->data(), host_copy_of(*v), v->nbytes()};
  }
  if (copied_in) {
    GRADCOMM_CUDA_CALL(cudaStreamSynchronize(s.stream), "MpiCommunicator on rank ", rank_,
                       ": waiting for the copies to pinned host buffers");
  }
  // Every CUDA view now names its host copy (the outputs' are written by MPI).
  for (std::initializer_list<TensorView*> list : {inputs, outputs}) {
    for (TensorView* v : list) {
      if (v->device() != Device::kCuda) continue;
      void* host = v->numel() == 0 ? v->data() : host_copy_of(*v);
      *v = TensorView(host, v->numel(), v->dtype(), Device::kCpu);
    }
  }
  return handle;
}

WorkHandle MpiCommunicator::finish_staging(WorkHandle staged, WorkHandle host) {
  static_cast<StagedWork&>(*staged).host = std::move(host);
  return staged;
}

}  // namespace gradcomm
