// CUDA kernels of DGC; see dgc_kernels.cuh. The element arithmetic and the search's rules
// come from kernels/shared/; this file holds the launches, the block reductions and scans,
// and CUB's sorts.
//
// Candidates are appended with one atomic per block and round (a block scan hands out the
// positions), in whatever order the blocks run; the selection never depends on that
// order: the radix select finds the k-th largest of the unique keys, and the chosen
// indices are sorted before they are packed.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <type_traits>
#include <cub/device/device_radix_sort.cuh>

#include "kernels/cuda/block_ops.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/device_buffer.cuh"
#include "kernels/cuda/dgc_kernels.cuh"
#include "kernels/shared/dgc_math.h"
#include "kernels/shared/grid.h"

namespace gradcomm::kernels::cuda {

// The search of one encode, in device memory; zeroed at the start of every encode.
struct DgcWorkspaceState {
  dgc::SearchState search;
  unsigned long long fused_count;                   // candidates the fused pass met
  unsigned long long round_count[dgc::kMaxRounds];  // candidates of each collect pass
  unsigned long long prefix;    // radix select: the high digits of the k-th largest key
  unsigned long long rank;      // its rank (1-based) among the keys with that prefix
  unsigned long long selected;  // indices chosen (min(count, k))
  unsigned int histogram[256];
  unsigned int blocks_done;  // the last block of a kernel finishes its step
  std::uint32_t predicted;   // the threshold the fused pass collected at (0: none)
};

struct DgcWorkspaceAccess {
  static std::uint64_t* keys(DgcWorkspace& w) { return w.keys_; }
  static std::uint32_t* samples(DgcWorkspace& w) { return w.samples_; }
  static std::uint32_t* samples_sorted(DgcWorkspace& w) { return w.samples_sorted_; }
  static std::uint32_t* selected(DgcWorkspace& w) { return w.selected_; }
  static DgcWorkspaceState* state(DgcWorkspace& w) { return w.state_; }
  static double* partials(DgcWorkspace& w) { return w.partials_; }
  static void* temp(DgcWorkspace& w) { return w.temp_; }
  static std::size_t temp_bytes(DgcWorkspace& w) { return w.temp_bytes_; }
};

namespace {

constexpr unsigned kThreads = kThreadsPerBlock;
constexpr int kSelectPasses = 8;  // 8-bit digits of the 64-bit keys

template <bool kNesterov, bool kScaled, bool kCollect>
__global__ void __launch_bounds__(kThreads)
    fused_pass(const float* __restrict__ g, float* __restrict__ u, float* __restrict__ v,
               std::size_t n, float m, const float* scale_at, const dgc::ThresholdMemory* memory,
               std::uint64_t* keys, std::size_t capacity, DgcWorkspaceState* st,
               std::uint32_t* nonfinite) {
  const float s = kScaled ? *scale_at : 1.0f;
  std::uint32_t predicted = 0;
  if constexpr (kCollect) {
    predicted = dgc::predicted_threshold(memory->last, memory->before);
    if (blockIdx.x == 0 && threadIdx.x == 0) st->predicted = predicted;
  }
  unsigned long long bad = 0;
  for (std::size_t round = 0;; ++round) {
    const std::size_t base = block_round_base(blockIdx.x, kThreads, gridDim.x, round);
    if (base >= n) break;
    const std::size_t i = base + threadIdx.x;
    std::uint32_t magnitude = 0;
    if (i < n) {
      float ui = u[i], vi = v[i];
      bad += !dgc::accumulate<kNesterov, kScaled>(g[i], ui, vi, m, s);
      u[i] = ui;
      v[i] = vi;
      magnitude = abs_bits(vi);
    }
    if (kCollect && predicted != 0) {
      block_append<kThreads>(i < n && magnitude >= predicted,
                   dgc::candidate_key(magnitude, static_cast<std::uint32_t>(i)), keys,
                   &st->fused_count, capacity);
    }
  }
  block_add_count(bad, nonfinite);
}

__global__ void take_samples(const float* __restrict__ v, std::size_t start, std::size_t stride,
                             std::size_t count, std::uint32_t* __restrict__ samples) {
  const GridStride gs = grid_stride(blockIdx.x, blockDim.x, threadIdx.x, gridDim.x);
  for (std::size_t j = gs.first; j < count; j += gs.stride) samples[j] = abs_bits(v[start + j * stride]);
}

__global__ void start_search(DgcWorkspaceState* st, const std::uint32_t* sorted_desc,
                             std::size_t samples, std::size_t rank, bool exact, std::size_t k,
                             std::size_t low, std::size_t capacity, dgc::ThresholdMemory* memory) {
  const std::uint32_t estimate = exact || samples == 0 ? 1u : dgc::at_least_one(sorted_desc[rank - 1]);
  const unsigned long long fused = st->fused_count;
  st->search = dgc::start_search(estimate, st->predicted, fused > capacity, fused, k, low);
  st->rank = k;
  if (!exact) *memory = {estimate, memory->last};
}

__global__ void __launch_bounds__(kThreads)
    collect_round(const float* __restrict__ v, std::size_t n, std::uint64_t* keys,
                  DgcWorkspaceState* st, int round, std::size_t low) {
  __shared__ bool done;
  __shared__ std::uint32_t t;
  if (threadIdx.x == 0) {
    done = st->search.done != 0;
    t = st->search.t;
  }
  __syncthreads();
  if (done) return;
  for (std::size_t r = 0;; ++r) {
    const std::size_t base = block_round_base(blockIdx.x, kThreads, gridDim.x, r);
    if (base >= n) break;
    const std::size_t i = base + threadIdx.x;
    const std::uint32_t magnitude = i < n ? abs_bits(v[i]) : 0u;
    block_append<kThreads>(i < n && magnitude >= t, dgc::candidate_key(magnitude, static_cast<std::uint32_t>(i)),
                 keys, &st->round_count[round], n);
  }
  if (last_block(&st->blocks_done) && threadIdx.x == 0) {
    dgc::after_collect(st->search, load_volatile(&st->round_count[round]), low);
  }
}

// One digit of the radix select: the histogram of digit `pass` (from the top) over the
// candidates that share the digits found so far, then, in the last block, the digit of
// the rank-th largest. Nothing to do when every candidate is sent (count <= k).
__global__ void __launch_bounds__(kThreads)
    select_digit(const std::uint64_t* __restrict__ keys, DgcWorkspaceState* st, std::size_t k,
                 int pass) {
  __shared__ unsigned histogram[256];
  __shared__ unsigned long long count, prefix;
  if (threadIdx.x == 0) {
    count = st->search.count;
    prefix = st->prefix;
  }
  for (unsigned d = threadIdx.x; d < 256; d += blockDim.x) histogram[d] = 0;
  __syncthreads();
  if (count <= k) return;
  const int shift = 56 - 8 * pass;
  const GridStride gs = grid_stride(blockIdx.x, blockDim.x, threadIdx.x, gridDim.x);
  for (std::size_t j = gs.first; j < count; j += gs.stride) {
    const std::uint64_t key = keys[j];
    if (pass == 0 || (key >> (shift + 8)) == prefix) atomicAdd(&histogram[(key >> shift) & 255u], 1u);
  }
  __syncthreads();
  for (unsigned d = threadIdx.x; d < 256; d += blockDim.x) {
    if (histogram[d] != 0) atomicAdd(&st->histogram[d], histogram[d]);
  }
  if (last_block(&st->blocks_done) && threadIdx.x == 0) {
    unsigned long long rank = st->rank;
    unsigned digit = 255;
    for (; digit > 0; --digit) {
      const unsigned in_digit = *static_cast<volatile unsigned*>(&st->histogram[digit]);
      if (rank <= in_digit) break;
      rank -= in_digit;
    }
    st->rank = rank;
    st->prefix = (prefix << 8) | digit;
    for (unsigned d = 0; d < 256; ++d) st->histogram[d] = 0;
  }
}

// The indices of the keys at or above the k-th largest (all of them when count <= k):
// exactly min(count, k), in any order, into `selected` (prefilled with the sentinel).
__global__ void __launch_bounds__(kThreads)
    compact_selected(const std::uint64_t* __restrict__ keys, DgcWorkspaceState* st, std::size_t k,
                     std::uint32_t* selected) {
  __shared__ unsigned long long count, kth;
  if (threadIdx.x == 0) {
    count = st->search.count;
    kth = count > k ? st->prefix : 0;
  }
  __syncthreads();
  for (std::size_t r = 0;; ++r) {
    const std::size_t base = block_round_base(blockIdx.x, kThreads, gridDim.x, r);
    if (base >= count) break;
    const std::size_t j = base + threadIdx.x;
    const std::uint64_t key = j < count ? keys[j] : 0;
    block_append<kThreads>(j < count && key >= kth, dgc::key_index(key), selected, &st->selected, k);
  }
}

// Slots [0, sent): index (sorted already) and value, and what was sent leaves v; slots
// [sent, k): the sentinel and 0; then the count, the stats and the zero tail.
template <bool kHalf>
__global__ void pack(std::uint8_t* payload, std::size_t k, float* __restrict__ v, float* __restrict__ u,
                     bool masking, const DgcWorkspaceState* st, dgc::SearchStats* stats) {
  const auto* indices = reinterpret_cast<const std::uint32_t*>(payload + dgc::kPayloadHeaderBytes);
  std::uint8_t* values = payload + dgc::values_offset(k);
  const GridStride gs = grid_stride(blockIdx.x, blockDim.x, threadIdx.x, gridDim.x);
  for (std::size_t j = gs.first; j < k; j += gs.stride) {
    const std::uint32_t i = indices[j];
    const bool used = i != dgc::kSentinel;
    if constexpr (kHalf) {
      reinterpret_cast<std::uint16_t*>(values)[j] = used ? dgc::take_f16(v[i]) : std::uint16_t{0};
    } else {
      reinterpret_cast<float*>(values)[j] = used ? dgc::take_f32(v[i]) : 0.0f;
    }
    if (used && masking) u[i] = 0.0f;
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    const unsigned long long sent = st->selected;
    *reinterpret_cast<std::uint32_t*>(payload) = static_cast<std::uint32_t>(sent);
    for (std::size_t b = dgc::values_offset(k) + k * (kHalf ? 2 : 4); b < dgc::payload_bytes(k, kHalf); ++b) {
      payload[b] = 0;
    }
    if (stats) *stats = {k, sent, st->search.count, st->search.threshold, st->search.rounds};
  }
}

__global__ void sum_squares_finite(const float* __restrict__ g, std::size_t n, double* partials) {
  double sum = 0;
  const GridStride gs = grid_stride(blockIdx.x, blockDim.x, threadIdx.x, gridDim.x);
  for (std::size_t i = gs.first; i < n; i += gs.stride) {
    const float x = g[i];
    if (is_finite(x)) sum += static_cast<double>(x) * static_cast<double>(x);
  }
  sum = block_reduce(sum, SumOp());
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

__global__ void finish_clip(const double* partials, unsigned count, double limit, float* scale) {
  double sum = 0;
  for (unsigned j = threadIdx.x; j < count; j += blockDim.x) sum += partials[j];
  sum = block_reduce(sum, SumOp());
  if (threadIdx.x == 0) *scale = dgc::clip_factor(sum, limit);
}

template <bool kHalf>
__global__ void dense_payload(const float* __restrict__ g, std::size_t n, const float* scale,
                              void* payload, std::uint32_t* nonfinite) {
  const float s = scale ? *scale : 1.0f;
  unsigned long long bad = 0;
  const GridStride gs = grid_stride(blockIdx.x, blockDim.x, threadIdx.x, gridDim.x);
  for (std::size_t i = gs.first; i < n; i += gs.stride) {
    bad += !is_finite(g[i]);
    const float x = dgc::scaled_or_zero(g[i], s);
    if constexpr (kHalf) {
      static_cast<std::uint16_t*>(payload)[i] = float_to_half(x);
    } else {
      static_cast<float*>(payload)[i] = x;
    }
  }
  block_add_count(bad, nonfinite);
}

template <bool kNesterov, bool kScaled, bool kHalf>
__global__ void flush(const float* __restrict__ g, float* __restrict__ u, float* __restrict__ v,
                      std::size_t n, float m, const float* scale, void* payload,
                      std::uint32_t* nonfinite) {
  const float s = kScaled ? *scale : 1.0f;
  unsigned long long bad = 0;
  const GridStride gs = grid_stride(blockIdx.x, blockDim.x, threadIdx.x, gridDim.x);
  for (std::size_t i = gs.first; i < n; i += gs.stride) {
    float ui = u[i], vi = v[i];
    bad += !dgc::accumulate<kNesterov, kScaled>(g[i], ui, vi, m, s);
    const float x = dgc::scaled_or_zero(vi, 1.0f);
    if constexpr (kHalf) {
      static_cast<std::uint16_t*>(payload)[i] = float_to_half(x);
    } else {
      static_cast<float*>(payload)[i] = x;
    }
    u[i] = 0.0f;
    v[i] = 0.0f;
  }
  block_add_count(bad, nonfinite);
}

template <bool kHalf, bool kMomentum, bool kNesterov>
__global__ void dense_decode(const void* received, std::size_t n, float inv, float* out, float* u,
                             float m) {
  const GridStride gs = grid_stride(blockIdx.x, blockDim.x, threadIdx.x, gridDim.x);
  for (std::size_t i = gs.first; i < n; i += gs.stride) {
    float avg = kHalf ? fmul(half_to_float(static_cast<const std::uint16_t*>(received)[i]), inv)
                      : fmul(static_cast<const float*>(received)[i], inv);
    if constexpr (kMomentum) dgc::dense_momentum<kNesterov>(avg, u[i], m);
    out[i] = avg;
  }
}

__global__ void validate_blocks(const std::uint8_t* received, int ranks, std::size_t block_bytes,
                                std::size_t k, std::size_t n, std::uint32_t* bad_rank) {
  const std::size_t slots = static_cast<std::size_t>(ranks) * k;
  const GridStride gs = grid_stride(blockIdx.x, blockDim.x, threadIdx.x, gridDim.x);
  for (std::size_t e = gs.first; e < slots; e += gs.stride) {
    const std::size_t r = e / k, j = e % k;
    const std::uint8_t* block = received + r * block_bytes;
    const std::uint32_t count = dgc::payload_count(block);
    if (count > k || !dgc::slot_valid(block, j, count, n)) atomicMin(bad_rank, static_cast<std::uint32_t>(r));
  }
}

// Slot j of a validated block holding index i, or -1 (its indices increase).
__device__ long long find_slot(const std::uint8_t* block, std::uint32_t count, std::uint32_t i) {
  std::uint32_t lo = 0, hi = count;
  while (lo < hi) {
    const std::uint32_t mid = lo + (hi - lo) / 2;
    if (dgc::payload_index(block, mid) < i) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo < count && dgc::payload_index(block, lo) == i ? static_cast<long long>(lo) : -1;
}

// The thread of the first rank holding an index writes its whole sum, adding the ranks'
// terms in rank order from +0: the CPU's sum, with no atomics and no ordering by luck.
template <bool kHalf>
__global__ void scatter_ranks(const std::uint8_t* received, int ranks, std::size_t block_bytes,
                              std::size_t k, float inv, float* out, const std::uint32_t* bad_rank) {
  if (*bad_rank != 0xffffffffu) return;
  const std::size_t slots = static_cast<std::size_t>(ranks) * k;
  const GridStride gs = grid_stride(blockIdx.x, blockDim.x, threadIdx.x, gridDim.x);
  for (std::size_t e = gs.first; e < slots; e += gs.stride) {
    const int r = static_cast<int>(e / k);
    const std::size_t j = e % k;
    const std::uint8_t* block = received + static_cast<std::size_t>(r) * block_bytes;
    if (j >= dgc::payload_count(block)) continue;
    const std::uint32_t i = dgc::payload_index(block, j);
    bool first = true;
    for (int earlier = 0; earlier < r && first; ++earlier) {
      const std::uint8_t* other = received + static_cast<std::size_t>(earlier) * block_bytes;
      first = find_slot(other, dgc::payload_count(other), i) < 0;
    }
    if (!first) continue;
    float sum = fadd(0.0f, dgc::average_term(dgc::payload_value(block, k, j, kHalf), inv));
    for (int later = r + 1; later < ranks; ++later) {
      const std::uint8_t* other = received + static_cast<std::size_t>(later) * block_bytes;
      const long long slot = find_slot(other, dgc::payload_count(other), i);
      if (slot >= 0) {
        sum = fadd(sum, dgc::average_term(dgc::payload_value(other, k, static_cast<std::size_t>(slot), kHalf), inv));
      }
    }
    out[i] = sum;
  }
}

template <bool kHalf>
__global__ void restore_flush(const void* own, std::size_t n, float* v) {
  const GridStride gs = grid_stride(blockIdx.x, blockDim.x, threadIdx.x, gridDim.x);
  for (std::size_t i = gs.first; i < n; i += gs.stride) {
    const float sent = kHalf ? half_to_float(static_cast<const std::uint16_t*>(own)[i])
                             : static_cast<const float*>(own)[i];
    v[i] = fadd(v[i], sent);
  }
}

__global__ void restore_selected(const std::uint8_t* own, std::size_t k, bool half, std::size_t n,
                                 float* v) {
  const std::uint32_t count = dgc::payload_count(own);
  const std::size_t used = count < k ? count : k;
  const GridStride gs = grid_stride(blockIdx.x, blockDim.x, threadIdx.x, gridDim.x);
  for (std::size_t j = gs.first; j < used; j += gs.stride) {
    const std::uint32_t i = dgc::payload_index(own, j);
    if (i < n) v[i] = fadd(v[i], dgc::payload_value(own, k, j, half));
  }
}

template <typename T>
void sort_size(std::size_t* bytes, std::size_t items) {
  T* none = nullptr;
  std::size_t need = 0;
  GRADCOMM_CUDA_OK(cub::DeviceRadixSort::SortKeys(nullptr, need, none, none, static_cast<int>(items)),
                   "sizing a radix sort of ", items, " keys");
  *bytes = std::max(*bytes, need);
}

}  // namespace

DgcWorkspace::DgcWorkspace(std::size_t max_numel, std::size_t max_slots, std::size_t sample_stride,
                           int device)
    : max_numel_(max_numel), max_slots_(std::min(max_slots, max_numel)),
      sample_stride_(std::max<std::size_t>(sample_stride, 1)), device_(device) {
  // CUB's sorts take an int item count; indices travel as uint32 below the sentinel.
  GRADCOMM_CHECK_ARG(max_numel <= static_cast<std::size_t>(INT_MAX), "DgcWorkspace: a layer of ",
                     max_numel, " elements; at most 2^31 - 1 per layer on a CUDA device");
  const std::size_t n = std::max<std::size_t>(max_numel_, 1);
  const std::size_t samples = std::max<std::size_t>(dgc::sample_count(n, 0, sample_stride_), 1);
  const std::size_t slots = std::max<std::size_t>(max_slots_, 1);
  // Zeroed memory (the search state must start at 0), complete when this returns, without
  // waiting for the device as a whole (other ranks may share it).
  auto alloc = [device](auto** ptr, std::size_t count) {
    *ptr = static_cast<std::remove_reference_t<decltype(*ptr)>>(allocate_zeroed(count * sizeof(**ptr), device));
  };
  try {
    ScopedDevice on(device);  // the sort size queries read the device's properties
    alloc(&keys_, n);
    alloc(&samples_, samples);
    alloc(&samples_sorted_, samples);
    alloc(&selected_, slots);
    alloc(&state_, 1);
    alloc(&partials_, kMaxBlocks);
    alloc(&clip_scale_, 1);
    // One temporary storage for both sorts (samples, then the selected indices).
    temp_bytes_ = 1;
    sort_size<std::uint32_t>(&temp_bytes_, samples);
    sort_size<std::uint32_t>(&temp_bytes_, slots);
    temp_ = allocate_zeroed(temp_bytes_, device);
  } catch (...) {
    release();
    throw;
  }
}

DgcWorkspace::~DgcWorkspace() { release(); }

void DgcWorkspace::release() noexcept {
  for (void* p : {static_cast<void*>(keys_), static_cast<void*>(samples_),
                  static_cast<void*>(samples_sorted_), static_cast<void*>(selected_),
                  static_cast<void*>(state_), static_cast<void*>(partials_),
                  static_cast<void*>(clip_scale_), temp_}) {
    free_device(p);
  }
  keys_ = nullptr;
  samples_ = samples_sorted_ = selected_ = nullptr;
  state_ = nullptr;
  partials_ = nullptr;
  clip_scale_ = nullptr;
  temp_ = nullptr;
}

void dgc_encode_sparse(const dgc::SparseEncodeArgs& a, DgcWorkspace& w, std::uint32_t* nonfinite,
                       void* stream) {
  using A = DgcWorkspaceAccess;
  const std::size_t n = a.n, k = a.k;
  GRADCOMM_CHECK_ARG(n <= w.max_numel() && k >= 1 && k <= n && k <= w.max_slots() &&
                         a.sample_stride == w.sample_stride(),
                     "dgc_encode_sparse (CUDA): a layer of ", n, " elements with k=", k,
                     " and sample stride ", a.sample_stride, " on a workspace for ", w.max_numel(),
                     " elements, ", w.max_slots(), " slots, stride ", w.sample_stride());
  GRADCOMM_CHECK_ARG(reinterpret_cast<std::uintptr_t>(a.payload) % 4 == 0,
                     "dgc_encode_sparse (CUDA): the payload must be 4-byte aligned");
  const cudaStream_t s = as_stream(stream);
  DgcWorkspaceState* st = A::state(w);
  std::uint64_t* keys = A::keys(w);
  GRADCOMM_CUDA_OK(cudaMemsetAsync(st, 0, sizeof(DgcWorkspaceState), s), "resetting the DGC search");

  const unsigned blocks = grid_blocks(n);
  const bool scaled = a.grad_scale_at != nullptr;
  const std::size_t capacity = dgc::fused_capacity(n, k);
  auto fused = [&]<bool kNesterov, bool kScaled>() {
    if (a.exact) {
      fused_pass<kNesterov, kScaled, false><<<blocks, kThreads, 0, s>>>(
          a.grad, a.u, a.v, n, a.momentum, a.grad_scale_at, a.memory, keys, capacity, st, nonfinite);
    } else {
      fused_pass<kNesterov, kScaled, true><<<blocks, kThreads, 0, s>>>(
          a.grad, a.u, a.v, n, a.momentum, a.grad_scale_at, a.memory, keys, capacity, st, nonfinite);
    }
  };
  if (a.nesterov) {
    scaled ? fused.template operator()<true, true>() : fused.template operator()<true, false>();
  } else {
    scaled ? fused.template operator()<false, true>() : fused.template operator()<false, false>();
  }
  check_launch("DGC fused pass");

  std::size_t samples = 0, rank = 1;
  if (!a.exact) {
    samples = dgc::sample_count(n, a.sample_start, a.sample_stride);
    rank = dgc::sample_rank(samples, a.density);
    if (samples > 0) {
      take_samples<<<grid_blocks(samples), kThreads, 0, s>>>(a.v, a.sample_start, a.sample_stride,
                                                             samples, A::samples(w));
      check_launch("DGC sample");
      std::size_t bytes = A::temp_bytes(w);
      GRADCOMM_CUDA_OK(cub::DeviceRadixSort::SortKeysDescending(A::temp(w), bytes, A::samples(w),
                                                                A::samples_sorted(w),
                                                                static_cast<int>(samples), 0, 32, s),
                       "sorting ", samples, " samples");
    }
  }
  const std::size_t low = dgc::low_count(k);
  start_search<<<1, 1, 0, s>>>(st, A::samples_sorted(w), samples, rank, a.exact, k, low, capacity,
                               a.memory);
  check_launch("DGC search start");
  // The fused pass was round 1; each further round is a no-op once the search is done.
  for (int round = 1; round < dgc::kMaxRounds; ++round) {
    collect_round<<<blocks, kThreads, 0, s>>>(a.v, n, keys, st, round, low);
    check_launch("DGC collect pass");
  }
  // The candidates are usually about 1.3k (at most the fused capacity); the exact
  // selection may collect every nonzero. The loops stride over whatever count they find.
  const unsigned select_blocks = grid_blocks(a.exact ? n : capacity);
  for (int pass = 0; pass < kSelectPasses; ++pass) {
    select_digit<<<select_blocks, kThreads, 0, s>>>(keys, st, k, pass);
    check_launch("DGC radix select");
  }
  GRADCOMM_CUDA_OK(cudaMemsetAsync(A::selected(w), 0xff, k * sizeof(std::uint32_t), s),
                   "filling the slots with the sentinel");
  compact_selected<<<select_blocks, kThreads, 0, s>>>(keys, st, k, A::selected(w));
  check_launch("DGC selection");
  // Ascending indices, the sentinels (the largest uint32) last: the payload's index slots.
  auto* slots = reinterpret_cast<std::uint32_t*>(static_cast<std::uint8_t*>(a.payload) +
                                                 dgc::kPayloadHeaderBytes);
  std::size_t bytes = A::temp_bytes(w);
  GRADCOMM_CUDA_OK(cub::DeviceRadixSort::SortKeys(A::temp(w), bytes, A::selected(w), slots,
                                                  static_cast<int>(k), 0, 32, s),
                   "sorting ", k, " selected indices");
  auto* payload = static_cast<std::uint8_t*>(a.payload);
  if (a.half_values) {
    pack<true><<<grid_blocks(k), kThreads, 0, s>>>(payload, k, a.v, a.u, a.masking, st, a.stats);
  } else {
    pack<false><<<grid_blocks(k), kThreads, 0, s>>>(payload, k, a.v, a.u, a.masking, st, a.stats);
  }
  check_launch("DGC pack");
}

void dgc_clip_scale(const float* grad, std::size_t n, double limit, DgcWorkspace& w, void* stream) {
  using A = DgcWorkspaceAccess;
  const cudaStream_t s = as_stream(stream);
  const unsigned blocks = grid_blocks(n);
  sum_squares_finite<<<blocks, kThreads, 0, s>>>(grad, n, A::partials(w));
  check_launch("DGC clipping norm");
  finish_clip<<<1, kThreads, 0, s>>>(A::partials(w), blocks, limit, w.clip_scale());
  check_launch("DGC clipping factor");
}

void dgc_dense_payload(const float* grad, std::size_t n, const float* scale, bool half,
                       void* payload, std::uint32_t* nonfinite, void* stream) {
  if (n == 0) return;
  const cudaStream_t s = as_stream(stream);
  if (half) {
    dense_payload<true><<<grid_blocks(n), kThreads, 0, s>>>(grad, n, scale, payload, nonfinite);
  } else {
    dense_payload<false><<<grid_blocks(n), kThreads, 0, s>>>(grad, n, scale, payload, nonfinite);
  }
  check_launch("DGC dense payload");
}

void dgc_flush(const float* grad, float* u, float* v, std::size_t n, float momentum, bool nesterov,
               const float* scale, bool half, void* payload, std::uint32_t* nonfinite, void* stream) {
  if (n == 0) return;
  const cudaStream_t s = as_stream(stream);
  auto launch = [&]<bool kNesterov, bool kScaled>() {
    if (half) {
      flush<kNesterov, kScaled, true><<<grid_blocks(n), kThreads, 0, s>>>(grad, u, v, n, momentum, scale,
                                                                          payload, nonfinite);
    } else {
      flush<kNesterov, kScaled, false><<<grid_blocks(n), kThreads, 0, s>>>(grad, u, v, n, momentum, scale,
                                                                           payload, nonfinite);
    }
  };
  if (nesterov) {
    scale ? launch.template operator()<true, true>() : launch.template operator()<true, false>();
  } else {
    scale ? launch.template operator()<false, true>() : launch.template operator()<false, false>();
  }
  check_launch("DGC flush");
}

void dgc_dense_decode(const void* received, bool half, std::size_t n, float inv_ranks, float* out,
                      bool momentum_after, float* u, float momentum, bool nesterov, void* stream) {
  if (n == 0) return;
  const cudaStream_t s = as_stream(stream);
  const unsigned blocks = grid_blocks(n);
  auto launch = [&]<bool kHalf>() {
    if (!momentum_after) {
      dense_decode<kHalf, false, false><<<blocks, kThreads, 0, s>>>(received, n, inv_ranks, out, u, momentum);
    } else if (nesterov) {
      dense_decode<kHalf, true, true><<<blocks, kThreads, 0, s>>>(received, n, inv_ranks, out, u, momentum);
    } else {
      dense_decode<kHalf, true, false><<<blocks, kThreads, 0, s>>>(received, n, inv_ranks, out, u, momentum);
    }
  };
  half ? launch.template operator()<true>() : launch.template operator()<false>();
  check_launch("DGC dense decode");
}

void dgc_sparse_decode(const std::uint8_t* received, int ranks, std::size_t block_bytes, std::size_t k,
                       bool half, std::size_t n, float inv_ranks, float* out, std::uint32_t* bad_rank,
                       void* stream) {
  const cudaStream_t s = as_stream(stream);
  if (n > 0) {
    GRADCOMM_CUDA_OK(cudaMemsetAsync(out, 0, n * sizeof(float), s), "zeroing the DGC update");
  }
  const std::size_t slots = static_cast<std::size_t>(ranks) * k;
  if (slots == 0) return;
  validate_blocks<<<grid_blocks(slots), kThreads, 0, s>>>(received, ranks, block_bytes, k, n, bad_rank);
  check_launch("DGC payload validation");
  if (half) {
    scatter_ranks<true><<<grid_blocks(slots), kThreads, 0, s>>>(received, ranks, block_bytes, k, inv_ranks,
                                                                out, bad_rank);
  } else {
    scatter_ranks<false><<<grid_blocks(slots), kThreads, 0, s>>>(received, ranks, block_bytes, k, inv_ranks,
                                                                 out, bad_rank);
  }
  check_launch("DGC sparse decode");
}

void dgc_restore_flush(const void* own_payload, bool half, std::size_t n, float* v, void* stream) {
  if (n == 0) return;
  const cudaStream_t s = as_stream(stream);
  if (half) {
    restore_flush<true><<<grid_blocks(n), kThreads, 0, s>>>(own_payload, n, v);
  } else {
    restore_flush<false><<<grid_blocks(n), kThreads, 0, s>>>(own_payload, n, v);
  }
  check_launch("DGC restore (flush)");
}

void dgc_restore_selected(const std::uint8_t* own_payload, std::size_t k, bool half, std::size_t n,
                          float* v, void* stream) {
  if (k == 0) return;
  restore_selected<<<grid_blocks(k), kThreads, 0, as_stream(stream)>>>(own_payload, k, half, n, v);
  check_launch("DGC restore (selected)");
}

}  // namespace gradcomm::kernels::cuda
