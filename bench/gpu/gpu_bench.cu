// gradcomm-gpubench: CUDA kernel timings against the device's own floors, in one run.
//
//   gradcomm-gpubench [--json FILE] [--iters N]
//
// Rows: a device-to-device copy of the gradient (the memory floor: read + write), the DGC
// sparse encode (exact and sampled selection) at the ResNet-50 gradient size and density
// 0.001, an exact top-k by a full CUB radix sort of (|v|, index) pairs (what exact
// selection costs without gradcomm's candidate filter; this CCCL has no DeviceTopK),
// the 4-bit quantizer with error feedback, and the 1-bit worker compress at 25,557,032
// and 100M elements. Each row is the median of N timed runs (CUDA events), after a
// warm-up. "vs floor": the row's time over the copy's time scaled to the bytes the row
// must move at least (DGC: read g, u, v and write u, v), measured in the same run.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cub/device/device_radix_sort.cuh>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/dgc_kernels.cuh"
#include "kernels/cuda/onebit_kernels.cuh"
#include "kernels/cuda/quantize_kernels.cuh"
#include "kernels/shared/dgc_math.h"
#include "kernels/shared/onebit_math.h"

namespace {

#define CHECK_CUDA(call)                                                                     \
  do {                                                                                       \
    const cudaError_t _e = (call);                                                           \
    if (_e != cudaSuccess) {                                                                 \
      std::fprintf(stderr, "gradcomm-gpubench: %s failed: %s (%s:%d)\n", #call,             \
                   cudaGetErrorString(_e), __FILE__, __LINE__);                              \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

struct Row {
  std::string name;
  std::size_t n;
  double median_ms;
  double bytes;  // bytes the operation must move at least (for GB/s)
};

double median_ms(int iters, const std::function<void()>& body) {
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  for (int i = 0; i < 3; ++i) body();  // warm-up: module load, first-touch
  CHECK_CUDA(cudaDeviceSynchronize());
  std::vector<double> times;
  for (int i = 0; i < iters; ++i) {
    CHECK_CUDA(cudaEventRecord(start));
    body();
    CHECK_CUDA(cudaEventRecord(stop));
    CHECK_CUDA(cudaEventSynchronize(stop));
    CHECK_CUDA(cudaGetLastError());
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms);
  }
  std::sort(times.begin(), times.end());
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return times[times.size() / 2];
}

float* device_random(std::size_t n, std::uint64_t seed) {
  std::vector<float> host(n);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1e-3f);
  for (float& x : host) x = normal(rng);
  float* d = nullptr;
  CHECK_CUDA(cudaMalloc(&d, n * sizeof(float)));
  CHECK_CUDA(cudaMemcpy(d, host.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  return d;
}

__global__ void make_keys(const float* v, std::size_t n, std::uint32_t* keys, std::uint32_t* index) {
  const std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  if (i < n) {
    keys[i] = __float_as_uint(fabsf(v[i]));
    index[i] = static_cast<std::uint32_t>(i);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string json;
  int iters = 20;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json" && i + 1 < argc) json = argv[++i];
    else if (a == "--iters" && i + 1 < argc) iters = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: gradcomm-gpubench [--json FILE] [--iters N]\n");
      return 2;
    }
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "gradcomm-gpubench: no CUDA device\n");
    return 77;
  }
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s\n", prop.name);

  std::vector<Row> rows;
  const std::size_t n = 25557032;
  const double density = 0.001;
  const std::size_t k = static_cast<std::size_t>(std::ceil(density * static_cast<double>(n)));

  {  // the floor: read and write the gradient once
    float* src = device_random(n, 1);
    float* dst = nullptr;
    CHECK_CUDA(cudaMalloc(&dst, n * sizeof(float)));
    rows.push_back({"device_copy", n, median_ms(iters, [&] {
                      CHECK_CUDA(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice));
                    }), 2.0 * 4.0 * static_cast<double>(n)});
    cudaFree(src);
    cudaFree(dst);
  }

  {  // DGC encode: momentum correction + selection + payload, exact and sampled
    float* grad = device_random(n, 2);
    float *u = nullptr, *v = nullptr;
    void* payload = nullptr;
    CHECK_CUDA(cudaMalloc(&u, n * sizeof(float)));
    CHECK_CUDA(cudaMalloc(&v, n * sizeof(float)));
    CHECK_CUDA(cudaMemset(u, 0, n * sizeof(float)));
    CHECK_CUDA(cudaMemset(v, 0, n * sizeof(float)));
    CHECK_CUDA(cudaMalloc(&payload, gradcomm::kernels::dgc::payload_bytes(k, false)));
    gradcomm::kernels::dgc::ThresholdMemory* memory = nullptr;
    std::uint32_t* nonfinite = nullptr;
    CHECK_CUDA(cudaMalloc(&memory, sizeof *memory));
    CHECK_CUDA(cudaMalloc(&nonfinite, sizeof *nonfinite));
    gradcomm::kernels::cuda::DgcWorkspace workspace(n, k, 100, 0);
    for (bool exact : {true, false}) {
      CHECK_CUDA(cudaMemset(memory, 0, sizeof *memory));
      gradcomm::kernels::dgc::SparseEncodeArgs a;
      a.grad = grad;
      a.u = u;
      a.v = v;
      a.n = n;
      a.k = k;
      a.exact = exact;
      a.density = density;
      a.sample_stride = 100;
      a.payload = payload;
      a.memory = memory;
      std::size_t step = 0;
      rows.push_back({exact ? "dgc_encode_exact" : "dgc_encode_sampled", n, median_ms(iters, [&] {
                        a.sample_start = (step++ * 37) % 100;
                        gradcomm::kernels::cuda::dgc_encode_sparse(a, workspace, nonfinite, nullptr);
                      }),
                      5.0 * 4.0 * static_cast<double>(n)});  // read g, u, v; write u, v
    }
    cudaFree(memory);
    cudaFree(nonfinite);
    // Exact top-k without a candidate filter: sort all (|v|, index) pairs.
    std::uint32_t *keys, *keys_out, *index, *index_out;
    CHECK_CUDA(cudaMalloc(&keys, n * 4));
    CHECK_CUDA(cudaMalloc(&keys_out, n * 4));
    CHECK_CUDA(cudaMalloc(&index, n * 4));
    CHECK_CUDA(cudaMalloc(&index_out, n * 4));
    std::size_t temp_bytes = 0;
    cub::DeviceRadixSort::SortPairsDescending(nullptr, temp_bytes, keys, keys_out, index, index_out, n);
    void* temp = nullptr;
    CHECK_CUDA(cudaMalloc(&temp, temp_bytes));
    rows.push_back({"topk_full_radix_sort", n, median_ms(iters, [&] {
                      make_keys<<<static_cast<unsigned>((n + 255) / 256), 256>>>(v, n, keys, index);
                      cub::DeviceRadixSort::SortPairsDescending(temp, temp_bytes, keys, keys_out, index,
                                                                index_out, n);
                    }), 2.0 * 4.0 * static_cast<double>(n)});
    for (void* p : {static_cast<void*>(grad), static_cast<void*>(u), static_cast<void*>(v), payload,
                    static_cast<void*>(keys), static_cast<void*>(keys_out), static_cast<void*>(index),
                    static_cast<void*>(index_out), temp})
      cudaFree(p);
  }

  {  // 4-bit quantization with error feedback: read g and the residual, write both out
    namespace quant = gradcomm::kernels::quant;
    float* grad = device_random(n, 4);
    float* residual = nullptr;
    std::uint8_t* payload = nullptr;
    std::uint32_t* nonfinite = nullptr;
    gradcomm::kernels::QuantizeParams params;
    params.bits = 4;
    params.bucket = 512;
    const std::size_t bytes = quant::payload_bytes(n, params.bits, params.bucket);
    CHECK_CUDA(cudaMalloc(&residual, n * sizeof(float)));
    CHECK_CUDA(cudaMemset(residual, 0, n * sizeof(float)));
    CHECK_CUDA(cudaMalloc(&payload, bytes));
    CHECK_CUDA(cudaMalloc(&nonfinite, sizeof *nonfinite));
    rows.push_back({"quantize_4bit_ef", n, median_ms(iters, [&] {
                      gradcomm::kernels::cuda::quantize_error_feedback(grad, residual, n, params, payload, nonfinite,
                                                                       nullptr);
                    }), 3.0 * 4.0 * static_cast<double>(n) + static_cast<double>(bytes)});
    for (void* p : {static_cast<void*>(grad), static_cast<void*>(residual), static_cast<void*>(payload),
                    static_cast<void*>(nonfinite)})
      cudaFree(p);
  }

  for (std::size_t size : {n, std::size_t{100000000}}) {  // 1-bit worker compress, 4 ranks' chunks
    const int ranks = 4;
    const std::size_t padded = gradcomm::kernels::onebit::padded_numel(size, ranks);
    // The per-rank stride of one tensor: its segment, the scale 4-byte aligned.
    const std::size_t stride = gradcomm::kernels::onebit::segment_bytes(padded, ranks);
    float* x = device_random(size, 3);
    float* err = nullptr;
    std::uint8_t* out = nullptr;
    std::uint32_t* nonfinite = nullptr;
    CHECK_CUDA(cudaMalloc(&err, padded * sizeof(float)));
    CHECK_CUDA(cudaMemset(err, 0, padded * sizeof(float)));
    CHECK_CUDA(cudaMalloc(&out, stride * ranks));
    CHECK_CUDA(cudaMalloc(&nonfinite, sizeof *nonfinite));
    void* scratch = nullptr;
    CHECK_CUDA(cudaMalloc(&scratch, gradcomm::kernels::cuda::onebit_scratch_bytes()));
    rows.push_back({"onebit_worker_compress", size, median_ms(iters, [&] {
                      gradcomm::kernels::cuda::onebit_worker_compress(x, size, err, padded, ranks, out, stride,
                                                                      scratch, nonfinite, nullptr);
                    }), 4.0 * 4.0 * static_cast<double>(size)});  // two passes over x and err
    for (void* p : {static_cast<void*>(x), static_cast<void*>(err), static_cast<void*>(out),
                    static_cast<void*>(nonfinite), scratch})
      cudaFree(p);
  }

  // The floor of a row: the copy's time for the bytes the row must move.
  const double copy_ms = rows[0].median_ms, copy_bytes = rows[0].bytes;
  auto vs_floor = [&](const Row& r) { return r.median_ms / (copy_ms * r.bytes / copy_bytes); };
  std::printf("%-26s %12s %10s %10s %10s\n", "kernel", "elements", "ms", "GB/s", "vs floor");
  for (const Row& r : rows) {
    std::printf("%-26s %12zu %10.3f %10.1f %9.2fx\n", r.name.c_str(), r.n, r.median_ms,
                r.bytes / (r.median_ms * 1e-3) / 1e9, vs_floor(r));
  }
  if (!json.empty()) {
    std::ofstream out(json);
    out << "{\"device\": \"" << prop.name << "\", \"iters\": " << iters << ", \"rows\": [";
    for (std::size_t i = 0; i < rows.size(); ++i) {
      out << (i ? ", " : "") << "{\"name\": \"" << rows[i].name << "\", \"elements\": " << rows[i].n
          << ", \"median_ms\": " << rows[i].median_ms << ", \"min_bytes\": " << rows[i].bytes
          << ", \"vs_floor\": " << vs_floor(rows[i]) << "}";
    }
    out << "]}\n";
  }
  return 0;
}
