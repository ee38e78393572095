#include "gradcomm/agreement.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#if defined(GRADCOMM_HAVE_CUDA)
#include "comm/cuda_call.h"
#endif

namespace gradcomm {
namespace {

// What every rank must agree on for one layer: its name, size, shape rank and flags.
struct LayerRecord {
  std::uint32_t name_hash;
  std::uint32_t numel_lo;
  std::uint32_t numel_hi;
  std::uint32_t shape_flags;
};

LayerRecord record_of(const LayerSpec& layer) {
  const std::uint64_t name_hash = fingerprint_bytes(layer.name.data(), layer.name.size());
  const std::uint64_t numel = layer.numel;
  return {static_cast<std::uint32_t>(name_hash ^ (name_hash >> 32)),
          static_cast<std::uint32_t>(numel), static_cast<std::uint32_t>(numel >> 32),
          // ndim, forced dense, and the gradient's dtype (ranks must update alike).
          static_cast<std::uint32_t>(layer.ndim) * 2u + (layer.force_dense ? 1u : 0u) +
              (static_cast<std::uint32_t>(layer.dtype) << 24)};
}

std::uint64_t numel_of(const LayerRecord& r);

std::string describe_record(const LayerRecord& r) {
  const std::uint32_t flags = r.shape_flags & 0xffffffu;
  const auto dtype = static_cast<DType>(r.shape_flags >> 24);
  return std::to_string(numel_of(r)) + " elements, ndim " + std::to_string(flags / 2) +
         ((flags & 1) ? ", forced dense" : "") + ", " + dtype_name(dtype);
}

std::uint64_t numel_of(const LayerRecord& r) { return (std::uint64_t{r.numel_hi} << 32) | r.numel_lo; }
bool same(const LayerRecord& a, const LayerRecord& b) {
  return a.name_hash == b.name_hash && a.numel_lo == b.numel_lo && a.numel_hi == b.numel_hi &&
         a.shape_flags == b.shape_flags;
}

// Settings texts are space-separated `key=value` words, led by the compressor's name: the
// first key whose value differs, with both values.
struct SettingDifference {
  std::string key, first, second;
};

std::vector<std::pair<std::string, std::string>> setting_words(const std::string& text) {
  std::vector<std::pair<std::string, std::string>> words;
  std::size_t begin = 0;
  while (begin < text.size()) {
    std::size_t end = text.find(' ', begin);
    if (end == std::string::npos) end = text.size();
    if (end > begin) {
      const std::string word = text.substr(begin, end - begin);
      const std::size_t eq = word.find('=');
      if (eq == std::string::npos) {
        // A bare word names what the settings are of: the compressor (first), or a part.
        words.emplace_back(words.empty() ? std::string("compressor")
                                         : "word " + std::to_string(words.size() + 1),
                           word);
      } else {
        words.emplace_back(word.substr(0, eq), word.substr(eq + 1));
      }
    }
    begin = end + 1;
  }
  return words;
}

SettingDifference first_difference(const std::string& a, const std::string& b) {
  const auto wa = setting_words(a), wb = setting_words(b);
  for (const auto& [key, value] : wa) {
    std::string other;
    for (const auto& [k, v] : wb) {
      if (k == key) {
        other = v;
        break;
      }
    }
    if (other != value) return {key, value, other};
  }
  for (const auto& [key, value] : wb) {
    bool found = false;
    for (const auto& [k, v] : wa) found = found || k == key;
    if (!found) return {key, "", value};
  }
  return {"(order of settings)", a, b};
}

TensorView u32(std::vector<std::uint32_t>& v) { return TensorView::of(std::span<std::uint32_t>(v)); }

// Runs one collective of the agreement on host arrays and waits for it. A communicator
// that takes device buffers only (NCCL, a ThreadCommunicator on CUDA) gets them in CUDA
// managed memory, which the host fills before the call and reads once the collective has
// completed, whatever device the communicator is on. A few words, at setup only.
using Collective = std::function<WorkHandle(TensorView send, TensorView recv)>;
void on_host_arrays(Communicator& comm, TensorView send, TensorView recv, const Collective& collective) {
  if (comm.accepts(Device::kCpu)) {
    collective(send, recv)->wait();
    return;
  }
#if defined(GRADCOMM_HAVE_CUDA)
  const std::size_t recv_at = (send.nbytes() + 255) / 256 * 256;
  void* managed = nullptr;
  GRADCOMM_CUDA_CALL(cudaMallocManaged(&managed, std::max<std::size_t>(recv_at + recv.nbytes(), 1)),
                     "layer agreement over ", comm.describe(), ": cudaMallocManaged of ",
                     recv_at + recv.nbytes(), " bytes");
  struct FreeOnExit {
    void* p;
    ~FreeOnExit() { cudaFree(p); }
  } free_on_exit{managed};
  // Managed memory is reachable from every device; the views name the caller's current
  // one (a communicator that wraps them as framework tensors, the hooks', asks).
  int device_index = 0;
  GRADCOMM_CUDA_CALL(cudaGetDevice(&device_index), "layer agreement: cudaGetDevice");
  auto* base = static_cast<char*>(managed);
  if (send.nbytes() != 0) std::memcpy(base, send.data(), send.nbytes());
  collective(TensorView(base, send.numel(), send.dtype(), comm.device(), device_index),
             TensorView(base + recv_at, recv.numel(), recv.dtype(), comm.device(), device_index))
      ->wait();
  // A transport may complete a work by ordering streams rather than the host (torch's
  // gloo on CUDA tensors): the device drains before the host reads. Once, at setup.
  GRADCOMM_CUDA_CALL(cudaDeviceSynchronize(), "layer agreement over ", comm.describe(),
                     ": cudaDeviceSynchronize");
  if (recv.nbytes() != 0) std::memcpy(recv.data(), base + recv_at, recv.nbytes());
#else
  GRADCOMM_THROW(ErrorCode::kInvalidArgument, "layer agreement: ", comm.describe(),
                 " takes no host buffers, and this build has no CUDA to stage them");
#endif
}

// Only on a mismatch: gathers every rank's layers and settings and names the first
// difference, identically on every rank (all ranks see the same gathered data).
[[noreturn]] void explain_mismatch(Communicator& comm, std::span<const LayerSpec> layers,
                                   const std::string& settings, const std::string& what) {
  const int p = comm.size();
  std::vector<std::uint32_t> local_counts = {static_cast<std::uint32_t>(layers.size()),
                                             static_cast<std::uint32_t>(settings.size())};
  std::vector<std::uint32_t> counts(2 * static_cast<std::size_t>(p));
  on_host_arrays(comm, u32(local_counts), u32(counts),
                 [&](TensorView send, TensorView recv) { return comm.allgather(send, recv); });

  std::vector<std::uint32_t> records(layers.size() * 4);
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const LayerRecord r = record_of(layers[i]);
    records[4 * i] = r.name_hash; records[4 * i + 1] = r.numel_lo;
    records[4 * i + 2] = r.numel_hi; records[4 * i + 3] = r.shape_flags;
  }
  std::vector<std::size_t> record_counts(static_cast<std::size_t>(p)), text_counts(static_cast<std::size_t>(p));
  std::size_t total_records = 0, total_text = 0;
  for (int r = 0; r < p; ++r) {
    record_counts[r] = 4 * std::size_t{counts[2 * r]};
    text_counts[r] = counts[2 * r + 1];
    total_records += record_counts[r];
    total_text += text_counts[r];
  }
  std::vector<std::uint32_t> all_records(total_records);
  on_host_arrays(comm, u32(records), u32(all_records), [&](TensorView send, TensorView recv) {
    return comm.allgatherv(send, recv, record_counts);
  });
  std::vector<std::uint8_t> text(settings.begin(), settings.end()), all_text(total_text);
  on_host_arrays(comm, TensorView::of(std::span<std::uint8_t>(text)),
                 TensorView::of(std::span<std::uint8_t>(all_text)),
                 [&](TensorView send, TensorView recv) { return comm.allgatherv(send, recv, text_counts); });

  auto layer_of = [&](int r, std::size_t i) {
    std::size_t base = 0;
    for (int q = 0; q < r; ++q) base += record_counts[q];
    const std::uint32_t* x = &all_records[base + 4 * i];
    return LayerRecord{x[0], x[1], x[2], x[3]};
  };
  auto settings_of = [&](int r) {
    std::size_t base = 0;
    for (int q = 0; q < r; ++q) base += text_counts[q];
    return std::string(all_text.begin() + static_cast<std::ptrdiff_t>(base),
                       all_text.begin() + static_cast<std::ptrdiff_t>(base + text_counts[r]));
  };
  auto local_name = [&](std::size_t i) {
    return i < layers.size() ? "'" + layers[i].name + "'" : std::string("(none here)");
  };

  std::size_t min_layers = counts[0];
  for (int r = 1; r < p; ++r) min_layers = std::min<std::size_t>(min_layers, counts[2 * r]);
  for (std::size_t i = 0; i < min_layers; ++i) {
    for (int r = 1; r < p; ++r) {
      const LayerRecord a = layer_of(0, i), b = layer_of(r, i);
      if (same(a, b)) continue;
      GRADCOMM_THROW(ErrorCode::kSizeMismatch, what, ": ranks disagree on layer ", i,
                     " (on rank ", comm.rank(), " it is ", local_name(i), "): rank 0 has ",
                     describe_record(a), "; rank ", r, " has ", describe_record(b),
                     (a.name_hash != b.name_hash ? "; the names differ too" : ""));
    }
  }
  for (int r = 1; r < p; ++r) {
    if (counts[2 * r] != counts[0]) {
      GRADCOMM_THROW(ErrorCode::kSizeMismatch, what, ": rank 0 registered ", counts[0],
                     " layers, rank ", r, " registered ", counts[2 * r],
                     "; the first layer one side lacks is layer ", min_layers,
                     " (on rank ", comm.rank(), ": ", local_name(min_layers), ")");
    }
  }
  for (int r = 1; r < p; ++r) {
    const std::string mine = settings_of(0), theirs = settings_of(r);
    if (theirs == mine) continue;
    const SettingDifference d = first_difference(mine, theirs);
    GRADCOMM_THROW(ErrorCode::kSizeMismatch, what, ": the settings differ between ranks: '",
                   d.key, "' is ", d.first.empty() ? "(none)" : d.first, " on rank 0 and ",
                   d.second.empty() ? "(none)" : d.second, " on rank ", r, " (rank 0 has '",
                   mine, "', rank ", r, " has '", theirs, "')");
  }
  GRADCOMM_THROW(ErrorCode::kInternal, what, ": fingerprints differ but no difference was found");
}

}  // namespace

std::uint64_t fingerprint_bytes(const void* data, std::size_t bytes, std::uint64_t hash) noexcept {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < bytes; ++i) hash = (hash ^ p[i]) * 1099511628211ull;
  return hash;
}

bool same_on_all_ranks(Communicator& comm, std::uint64_t fingerprint) {
  std::vector<std::uint32_t> words = {static_cast<std::uint32_t>(fingerprint),
                                      static_cast<std::uint32_t>(fingerprint >> 32)};
  std::vector<std::uint32_t> high = words, low = words;
  on_host_arrays(comm, u32(words), u32(high),
                 [&](TensorView send, TensorView recv) { return comm.allreduce(send, recv, ReduceOp::kMax); });
  on_host_arrays(comm, u32(words), u32(low),
                 [&](TensorView send, TensorView recv) { return comm.allreduce(send, recv, ReduceOp::kMin); });
  return high == low;
}

void check_agreement(Communicator& comm, std::span<const LayerSpec> layers,
                     const std::string& settings, const std::string& what) {
  std::uint64_t hash = fingerprint_bytes(settings.data(), settings.size());
  for (const LayerSpec& layer : layers) {
    const LayerRecord r = record_of(layer);
    hash = fingerprint_bytes(&r, sizeof r, hash);
  }
  const std::uint64_t count = layers.size();
  hash = fingerprint_bytes(&count, sizeof count, hash);
  if (same_on_all_ranks(comm, hash)) return;
  explain_mismatch(comm, layers, settings, what);
}

}  // namespace gradcomm
