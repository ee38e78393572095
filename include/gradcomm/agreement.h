// Setup-time agreement: every rank checks that all ranks registered the same layers
// with the same settings, before the first exchange. No per-call cost. Works over any
// communicator: one that takes device buffers only (NCCL, a ThreadCommunicator on CUDA)
// exchanges the few words through CUDA managed memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "gradcomm/communicator.h"
#include "gradcomm/layer.h"

namespace gradcomm {

// Throws gradcomm::Error (kSizeMismatch) on every rank when any rank's layers or
// `settings` differ, naming the first differing layer (or the settings) and the ranks.
// Costs two small allreduces (plus an allgather of descriptions only on a mismatch).
// FNV-1a over `bytes`, continuing from `hash`: a cheap fingerprint of buffers or settings.
inline constexpr std::uint64_t kFingerprintSeed = 1469598103934665603ull;
std::uint64_t fingerprint_bytes(const void* data, std::size_t bytes,
                                std::uint64_t hash = kFingerprintSeed) noexcept;

// True on every rank iff every rank passed the same fingerprint (two 2-word allreduces:
// equal everywhere iff the max equals the min). Replicas that drifted show up here.
bool same_on_all_ranks(Communicator& comm, std::uint64_t fingerprint);

void check_agreement(Communicator& comm, std::span<const LayerSpec> layers,
                     const std::string& settings, const std::string& what);

}  // namespace gradcomm
