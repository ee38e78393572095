// The whole Exchanger on CUDA layers against the same job on the CPU, for every
// compressor: one rank over NcclCommunicator (bootstrapped by a one-rank
// ThreadCommunicator: no MPI on the GPU machine), and 2 and 4 ranks sharing the GPU over
// ThreadCommunicator. Every step's update, on every rank, and the step's statistics must
// be bitwise those of the CPU run, through a step skipped for a NaN and, for L-GreCo, a
// profiling step and a change of plan. ThreadCommunicator and NCCL on one rank sum in
// rank order, as the CPU run does, so nothing here is allowed to differ; the 1-bit
// allreduce (not an Exchanger compressor) has its own test below, where the scales may
// differ in the last bits (the norm's summation order) and are compared to 1e-6.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "gaussian_values.h"
#include "gradcomm/dense.h"
#include "gradcomm/dgc.h"
#include "gradcomm/exchanger.h"
#include "gradcomm/lgreco.h"
#include "gradcomm/onebit.h"
#include "gradcomm/quantize.h"
#include "gradcomm/thread_communicator.h"
#if defined(GRADCOMM_HAVE_NCCL)
#include "gradcomm/nccl_communicator.h"
#endif

namespace gradcomm {
namespace {

#define CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call

constexpr int kSteps = 5;
constexpr int kNanStep = 2;  // the last rank's "fc" gradient holds a NaN: the step is skipped

std::vector<LayerSpec> model_layers() {
  return {{"conv", 40009, 4}, {"bias", 37, 1}, {"fc", 3001, 2}, {"head", 650, 2}};
}

std::vector<float> gradient(int rank, std::size_t layer, int step, std::size_t n) {
  std::vector<float> g = testing::gaussian_values(n, 7919u * rank + 31u * layer + step, 1.0f + 0.25f * step);
  if (step == kNanStep && layer == 2 && n > 5) g[5] = std::numeric_limits<float>::quiet_NaN();
  return g;
}

struct Job {
  std::string name;
  std::function<std::shared_ptr<Compressor>()> make;
};

std::vector<Job> every_compressor() {
  std::vector<Job> jobs;
  jobs.push_back({"dense fp32", [] { return std::make_shared<DenseCompressor>(); }});
  jobs.push_back({"dense fp16 wire", [] { return std::make_shared<DenseCompressor>(DenseOptions{DType::kFloat16}); }});
  jobs.push_back({"quantize 4 bits nearest", [] {
                    QuantizeOptions o;
                    o.bucket_size = 128;
                    return std::make_shared<QuantizeCompressor>(o);
                  }});
  jobs.push_back({"quantize 2 bits stochastic", [] {
                    QuantizeOptions o;
                    o.bits = 2;
                    o.rounding = Rounding::kStochastic;
                    o.seed = 11;
                    return std::make_shared<QuantizeCompressor>(o);
                  }});
  jobs.push_back({"dgc exact", [] {
                    DgcOptions o;
                    o.density = 0.01;
                    o.warmup_densities = {};
                    o.selection = DgcSelection::kExact;
                    return std::make_shared<DgcCompressor>(o);
                  }});
  jobs.push_back({"dgc sampled warm-up fp16 nesterov", [] {
                    DgcOptions o;
                    o.density = 0.005;
                    o.warmup_densities = {0.05, 0.5};
                    o.steps_per_epoch = 2;
                    o.nesterov = true;
                    o.value_dtype = DType::kFloat16;
                    return std::make_shared<DgcCompressor>(o);
                  }});
  for (LgrecoFamily family : {LgrecoFamily::kQuantBits, LgrecoFamily::kDgcDensity}) {
    jobs.push_back({std::string("lgreco ") + lgreco_family_name(family), [family] {
                      LgrecoOptions o;
                      o.family = family;
                      o.period = 2;  // profiles in step 1 (and 3)
                      o.quantize.bucket_size = 128;
                      o.dgc.warmup_densities = {};
                      o.dgc_sample = 1000;
                      return std::make_shared<LgrecoCompressor>(o);
                    }});
  }
  return jobs;
}

// What one rank saw: the update of every layer after every step, and the steps' stats.
struct RankRecord {
  std::vector<std::vector<std::vector<float>>> outs;  // [step][layer]
  std::vector<StepStats> stats;
  std::vector<std::size_t> plan_changes;  // L-GreCo: layers re-planned after a profiling step
};
using Record = std::vector<RankRecord>;  // by rank

// L-GreCo between steps: a profiling step's table is consumed and a plan that depends
// only on the step is applied (the planner's choice could differ between devices where
// two candidates' errors tie to rounding; the table itself is compared in test_lgreco.cu).
void after_step(Compressor& compressor, int step, RankRecord& record) {
  auto* lgreco = dynamic_cast<LgrecoCompressor*>(&compressor);
  if (!lgreco || !lgreco->table_ready()) return;
  std::vector<std::uint32_t> plan(lgreco->default_choice().begin(), lgreco->default_choice().end());
  for (std::size_t l = 0; l < plan.size(); ++l) {
    if (!lgreco->is_planned(l)) continue;
    plan[l] = static_cast<std::uint32_t>((l + static_cast<std::size_t>(step)) % lgreco->num_candidates());
    record.plan_changes.push_back(l);
  }
  lgreco->apply_plan(plan);
  lgreco->consume_table();
}

// The job on one rank: host layers, or CUDA layers whose kernels run on `stream`.
void run_rank(Communicator& comm, const Job& job, Device device, void* stream, RankRecord& record) {
  std::vector<LayerSpec> layers = model_layers();
  for (LayerSpec& l : layers) l.device = device;
  auto compressor = job.make();
  Exchanger ex(comm, compressor, layers, {.bucket_bytes = 8192, .nonfinite = NonFinitePolicy::kSkipStep});
  if (device == Device::kCuda) ex.set_stream(stream);
  std::vector<void*> grads(layers.size()), outs(layers.size());
  std::vector<std::vector<float>> host_grads(layers.size()), host_outs(layers.size());
  for (std::size_t l = 0; l < layers.size(); ++l) {
    host_outs[l].assign(layers[l].numel, -9.0f);
    if (device == Device::kCuda) {
      CUDA_OK(cudaMalloc(&grads[l], layers[l].numel * sizeof(float)));
      CUDA_OK(cudaMalloc(&outs[l], layers[l].numel * sizeof(float)));
    }
  }
  for (int step = 0; step < kSteps; ++step) {
    std::vector<TensorView> grad_views, out_views;
    for (std::size_t l = 0; l < layers.size(); ++l) {
      host_grads[l] = gradient(comm.rank(), l, step, layers[l].numel);
      const std::size_t n = layers[l].numel;
      if (device == Device::kCuda) {
        CUDA_OK(cudaMemcpy(grads[l], host_grads[l].data(), n * sizeof(float), cudaMemcpyHostToDevice));
        CUDA_OK(cudaMemset(outs[l], 0xff, n * sizeof(float)));  // NaN: a layer left unwritten shows
        grad_views.emplace_back(grads[l], n, DType::kFloat32, Device::kCuda);
        out_views.emplace_back(outs[l], n, DType::kFloat32, Device::kCuda);
      } else {
        grad_views.push_back(TensorView::of(std::span<float>(host_grads[l])));
        out_views.push_back(TensorView::of(std::span<float>(host_outs[l])));
      }
    }
    // The uploads ran on the legacy stream; the step's stream does not wait for it.
    if (device == Device::kCuda) {
      CUDA_OK(cudaDeviceSynchronize());
    }
    record.stats.push_back(ex.exchange(grad_views, out_views));
    if (device == Device::kCuda) {
      for (std::size_t l = 0; l < layers.size(); ++l) {
        CUDA_OK(cudaMemcpy(host_outs[l].data(), outs[l], layers[l].numel * sizeof(float), cudaMemcpyDeviceToHost));
      }
    }
    record.outs.push_back(host_outs);
    after_step(*compressor, step, record);
  }
  for (std::size_t l = 0; l < layers.size(); ++l) {
    cudaFree(grads[l]);
    cudaFree(outs[l]);
  }
}

Record run_threads(const Job& job, int p, Device device) {
  Record record(static_cast<std::size_t>(p));
  ThreadCommunicatorOptions options{.device = device};
  if (device == Device::kCuda) options.cuda_device = 0;
  ThreadCommunicator::run(
      p,
      [&](ThreadCommunicator& comm) {
        // ThreadCommunicator orders its copies after the rank's own stream: the step runs there.
        run_rank(comm, job, device, comm.stream(), record[static_cast<std::size_t>(comm.rank())]);
      },
      options);
  return record;
}

#if defined(GRADCOMM_HAVE_NCCL)
// One rank over NCCL, the step's kernels on a stream of their own: the collectives and
// the decodes meet NCCL's stream through follow_stream and wait_stream.
Record run_nccl(const Job& job) {
  Record record(1);
  std::unique_ptr<ThreadCommunicator> boot = std::move(ThreadCommunicator::create(1).front());
  NcclCommunicator nccl(*boot, {.device = 0});
  cudaStream_t stream = nullptr;
  EXPECT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  EXPECT_NE(stream, nccl.stream());
  run_rank(nccl, job, Device::kCuda, stream, record[0]);
  cudaStreamDestroy(stream);
  return record;
}
#endif

void expect_same_record(const Record& got, const Record& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t r = 0; r < want.size(); ++r) {
    ASSERT_EQ(got[r].outs.size(), want[r].outs.size()) << what;
    EXPECT_EQ(got[r].plan_changes, want[r].plan_changes) << what << ", rank " << r;
    for (std::size_t step = 0; step < want[r].outs.size(); ++step) {
      const StepStats& g = got[r].stats[step];
      const StepStats& w = want[r].stats[step];
      EXPECT_EQ(g.skipped, w.skipped) << what << ", rank " << r << " step " << step;
      EXPECT_EQ(g.nonfinite, w.nonfinite) << what << ", rank " << r << " step " << step;
      EXPECT_EQ(g.wire_bytes, w.wire_bytes) << what << ", rank " << r << " step " << step;
      EXPECT_EQ(g.payload_bytes, w.payload_bytes) << what << ", rank " << r << " step " << step;
      EXPECT_EQ(g.collectives, w.collectives) << what << ", rank " << r << " step " << step;
      for (std::size_t l = 0; l < want[r].outs[step].size(); ++l) {
        const auto& a = got[r].outs[step][l];
        const auto& b = want[r].outs[step][l];
        ASSERT_EQ(a.size(), b.size());
        ASSERT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0)
            << what << ": update of layer " << l << " differs from the CPU's, rank " << r << " step " << step;
      }
    }
  }
  // The CPU run itself skipped the NaN step, so the check above covers the policy.
  ASSERT_TRUE(want[0].stats[kNanStep].skipped) << what;
}

TEST(ExchangerOnCuda, ThreadRanksSharingTheGpuMatchTheCpu) {
  for (const Job& job : every_compressor()) {
    for (int p : {2, 4}) {
      const std::string what = job.name + ", " + std::to_string(p) + " thread ranks";
      const Record cpu = run_threads(job, p, Device::kCpu);
      const Record gpu = run_threads(job, p, Device::kCuda);
      expect_same_record(gpu, cpu, what);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
}

#if defined(GRADCOMM_HAVE_NCCL)
TEST(ExchangerOnCuda, OneNcclRankMatchesTheCpu) {
  for (const Job& job : every_compressor()) {
    const Record cpu = run_threads(job, 1, Device::kCpu);
    const Record gpu = run_nccl(job);
    expect_same_record(gpu, cpu, job.name + ", one NCCL rank");
    if (::testing::Test::HasFatalFailure()) return;
  }
}
#endif

// compressed_allreduce (1-bit with error feedback) over the same transports: on the GPU
// every rank ends with the same bits; against the CPU, each step starts both from the
// GPU's error state (the scales' last bits differ, and so would the errors fed back), and
// the results agree in sign and to 1e-6.
struct OneBitRun {
  std::vector<std::vector<float>> outs;  // [rank * steps + step]: the fused tensors back to back
  std::vector<std::vector<std::byte>> states;  // the state every rank started each step from
};

constexpr int kOneBitSteps = 3;
const std::vector<std::size_t> kOneBitNumels = {100003, 77, 4096};

void onebit_rank(Communicator& comm, Device device, void* stream, const std::vector<std::vector<std::byte>>* start,
                 std::vector<std::vector<float>>& outs, std::vector<std::vector<std::byte>>& states) {
  const int p = comm.size(), me = comm.rank();
  std::vector<OneBitErrorState> errors;
  for (std::size_t n : kOneBitNumels) errors.emplace_back(n, p, device, stream);
  std::vector<std::byte> workspace_host;
  void* workspace = nullptr;
  const std::size_t ws_bytes = onebit_workspace_bytes(kOneBitNumels, p, device);
  if (device == Device::kCuda) {
    CUDA_OK(cudaMalloc(&workspace, ws_bytes));
  } else {
    workspace_host.resize(ws_bytes);
    workspace = workspace_host.data();
  }
  for (int step = 0; step < kOneBitSteps; ++step) {
    const std::size_t at = static_cast<std::size_t>(me * kOneBitSteps + step);
    for (std::size_t t = 0; t < errors.size(); ++t) {
      if (start) errors[t].load((*start)[at * errors.size() + t]);
      states[at * errors.size() + t] = errors[t].save();
    }
    std::vector<std::vector<float>> xs;
    std::vector<void*> device_xs;
    std::vector<TensorView> in, out;
    for (std::size_t t = 0; t < kOneBitNumels.size(); ++t) {
      xs.push_back(testing::gaussian_values(kOneBitNumels[t], 101u * me + 13u * t + step));
      if (device == Device::kCuda) {
        void* d = nullptr;
        CUDA_OK(cudaMalloc(&d, xs[t].size() * sizeof(float)));
        CUDA_OK(cudaMemcpy(d, xs[t].data(), xs[t].size() * sizeof(float), cudaMemcpyHostToDevice));
        device_xs.push_back(d);
        in.emplace_back(d, xs[t].size(), DType::kFloat32, Device::kCuda);
      } else {
        in.push_back(TensorView::of(std::span<float>(xs[t])));
      }
      out.push_back(in.back());  // in place
    }
    if (device == Device::kCuda) {
      CUDA_OK(cudaDeviceSynchronize());
    }
    std::vector<OneBitErrorState*> ptrs;
    for (auto& e : errors) ptrs.push_back(&e);
    compressed_allreduce(comm, in, ptrs, out, TensorView(workspace, ws_bytes, DType::kUInt8, device), stream);
    std::vector<float>& all = outs[at];
    for (std::size_t t = 0; t < xs.size(); ++t) {
      if (device == Device::kCuda) {
        CUDA_OK(cudaMemcpy(xs[t].data(), device_xs[t], xs[t].size() * sizeof(float), cudaMemcpyDeviceToHost));
        cudaFree(device_xs[t]);
      }
      all.insert(all.end(), xs[t].begin(), xs[t].end());
    }
  }
  if (device == Device::kCuda) cudaFree(workspace);
}

OneBitRun run_onebit(int p, Device device, bool nccl, const OneBitRun* start) {
  OneBitRun run;
  run.outs.resize(static_cast<std::size_t>(p * kOneBitSteps));
  run.states.resize(run.outs.size() * kOneBitNumels.size());
  const auto* from = start ? &start->states : nullptr;
#if defined(GRADCOMM_HAVE_NCCL)
  if (nccl) {
    std::unique_ptr<ThreadCommunicator> boot = std::move(ThreadCommunicator::create(1).front());
    NcclCommunicator comm(*boot, {.device = 0});
    onebit_rank(comm, device, comm.stream(), from, run.outs, run.states);
    return run;
  }
#else
  (void)nccl;
#endif
  ThreadCommunicatorOptions options{.device = device};
  if (device == Device::kCuda) options.cuda_device = 0;
  ThreadCommunicator::run(
      p, [&](ThreadCommunicator& comm) { onebit_rank(comm, device, comm.stream(), from, run.outs, run.states); },
      options);
  return run;
}

TEST(ExchangerOnCuda, OneBitAllreduceMatchesTheCpu) {
  struct Case {
    int p;
    bool nccl;
  };
  std::vector<Case> cases = {{2, false}, {4, false}};
#if defined(GRADCOMM_HAVE_NCCL)
  cases.push_back({1, true});
#endif
  for (const Case c : cases) {
    const std::string what = std::to_string(c.p) + (c.nccl ? " NCCL rank" : " thread ranks");
    const OneBitRun gpu = run_onebit(c.p, Device::kCuda, c.nccl, nullptr);
    const OneBitRun cpu = run_onebit(c.p, Device::kCpu, false, &gpu);  // from the GPU's states
    for (int step = 0; step < kOneBitSteps; ++step) {
      for (int r = 0; r < c.p; ++r) {
        const auto& g = gpu.outs[static_cast<std::size_t>(r * kOneBitSteps + step)];
        const auto& w = cpu.outs[static_cast<std::size_t>(r * kOneBitSteps + step)];
        ASSERT_EQ(g, gpu.outs[static_cast<std::size_t>(step)]) << what << ": rank " << r << " differs from rank 0";
        ASSERT_EQ(g.size(), w.size());
        for (std::size_t i = 0; i < g.size(); ++i) {
          ASSERT_EQ(g[i] >= 0.0f, w[i] >= 0.0f) << what << ": sign of element " << i << ", step " << step;
          ASSERT_NEAR(g[i], w[i], 1e-6f * std::fabs(w[i])) << what << ": element " << i << ", step " << step;
        }
      }
    }
  }
}

}  // namespace
}  // namespace gradcomm
