// "mpi": each layer through a blocking MPI_Allreduce straight on the user's buffers, then
// scaled by 1/p: what the transport does on its own, without gradcomm's Exchanger (no
// buckets, no non-blocking collectives, no framing). Against "none" it shows what the
// Exchanger costs or saves.
#include <mpi.h>

#include "gradcomm/mpi_communicator.h"
#include "gradcomm_bench/runner.h"

namespace gradcomm::bench {
namespace {

class MpiAllreduceRunner final : public Runner {
 public:
  MpiAllreduceRunner(MpiCommunicator& comm, std::vector<LayerSpec> layers)
      : comm_(comm), layers_(std::move(layers)) {}

  Collective collective() const override { return Collective::kAllreduce; }
  CheckBound bound() const override { return fp32_average_bound(comm_.size()); }

  void step(std::span<const TensorView> grads, std::span<const TensorView> outs) override {
    const float inv = 1.0f / static_cast<float>(comm_.size());
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      const int rc = MPI_Allreduce(grads[i].data(), outs[i].data(), static_cast<int>(layers_[i].numel), MPI_FLOAT,
                                   MPI_SUM, comm_.comm());
      GRADCOMM_CHECK(rc == MPI_SUCCESS, ErrorCode::kCommunication, "gradcomm-bench mpi: MPI_Allreduce of layer ", i,
                     " ('", layers_[i].name, "', ", layers_[i].numel, " floats) failed on rank ", comm_.rank());
      for (float& v : outs[i].span<float>("output")) v *= inv;
      sent_ += allreduce_wire_bytes(layers_[i].numel * sizeof(float), comm_.size());
    }
  }

  std::uint64_t bytes_sent_outside_communicator() const override { return sent_; }

 private:
  MpiCommunicator& comm_;
  std::vector<LayerSpec> layers_;
  std::uint64_t sent_ = 0;
};

}  // namespace

std::unique_ptr<Runner> make_mpi_runner(Communicator& comm, std::vector<LayerSpec> layers, const RunnerConfig&) {
  auto* mpi = dynamic_cast<MpiCommunicator*>(&comm);
  GRADCOMM_CHECK(mpi != nullptr, ErrorCode::kUnsupported, "gradcomm-bench mpi: needs an MpiCommunicator, got ",
                 comm.describe());
  for (const LayerSpec& layer : layers) {
    GRADCOMM_CHECK_ARG(layer.numel <= static_cast<std::size_t>(INT32_MAX), "gradcomm-bench mpi: layer '", layer.name,
                       "' has ", layer.numel, " elements, over MPI's int count");
  }
  return std::make_unique<MpiAllreduceRunner>(*mpi, std::move(layers));
}

}  // namespace gradcomm::bench
