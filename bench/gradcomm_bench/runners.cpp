// The compressor table of gradcomm-bench. To add a compressor: write run_<name>.cpp with a
// factory, declare it below and put it in its row (replacing the nullptr), with the bytes
// per element a rank holds (measure the peak resident set of a 128 MiB row on 2 ranks:
// /usr/bin/time -f %M under mpirun).
#include <string>

#include "gradcomm_bench/runner.h"

namespace gradcomm::bench {

std::unique_ptr<Runner> make_none_runner(Communicator&, std::vector<LayerSpec>, const RunnerConfig&);
std::unique_ptr<Runner> make_fp16_runner(Communicator&, std::vector<LayerSpec>, const RunnerConfig&);
std::unique_ptr<Runner> make_mpi_runner(Communicator&, std::vector<LayerSpec>, const RunnerConfig&);
std::unique_ptr<Runner> make_onebit_runner(Communicator&, std::vector<LayerSpec>, const RunnerConfig&);
std::unique_ptr<Runner> make_dgc_runner(Communicator&, std::vector<LayerSpec>, const RunnerConfig&);
std::unique_ptr<Runner> make_dgc_fp16_runner(Communicator&, std::vector<LayerSpec>, const RunnerConfig&);
std::unique_ptr<Runner> make_quant_runner(Communicator&, std::vector<LayerSpec>, const RunnerConfig&);
std::unique_ptr<Runner> make_lgreco_quant_runner(Communicator&, std::vector<LayerSpec>, const RunnerConfig&);
std::unique_ptr<Runner> make_lgreco_dgc_runner(Communicator&, std::vector<LayerSpec>, const RunnerConfig&);

namespace {
constexpr RunnerEntry kRunners[] = {
    {"none", "dense fp32 allreduce through the Exchanger (the baseline)", make_none_runner, 30},
    {"fp16", "dense allreduce with fp16 on the wire (like torch's fp16_compress_hook)", make_fp16_runner, 20},
    {"mpi", "blocking MPI_Allreduce per layer, bypassing the Exchanger (the transport alone)", make_mpi_runner, 10},
    {"dgc", "Deep Gradient Compression, top-k allgather with error feedback (--density)", make_dgc_runner, 37},
    {"dgc-fp16", "DGC with fp16 values and fp16 dense tensors on the wire (--density)", make_dgc_fp16_runner, 27},
    {"onebit", "1-bit compressed allreduce with error feedback (two-phase)", make_onebit_runner, 15},
    {"quant", "k-bit max-min quantization with error feedback, allgather (--bits)", make_quant_runner, 16},
    {"lgreco-dgc", "L-GreCo per-layer densities over DGC (c0 --density, --lgreco-period)", make_lgreco_dgc_runner, 41},
    {"lgreco-quant", "L-GreCo per-layer bit widths over quantization (c0 --bits, --lgreco-period)",
     make_lgreco_quant_runner, 22},
};
}  // namespace

std::span<const RunnerEntry> runner_table() { return kRunners; }

const RunnerEntry& find_runner(const std::string& name) {
  std::string built, pending;
  const RunnerEntry* found = nullptr;
  for (const RunnerEntry& entry : kRunners) {
    std::string& list = entry.make ? built : pending;
    list += (list.empty() ? "" : ", ") + std::string(entry.name);
    if (name == entry.name) found = &entry;
  }
  GRADCOMM_CHECK(found != nullptr, ErrorCode::kInvalidArgument, "unknown compressor '",
                 name, "' (available: ", built, pending.empty() ? "" : "; not built yet: " + pending, ")");
  GRADCOMM_CHECK(found->make != nullptr, ErrorCode::kUnsupported, "compressor '", name,
                 "' is not built into this gradcomm yet (available: ", built, ")");
  return *found;
}

}  // namespace gradcomm::bench
