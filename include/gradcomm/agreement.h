// Setup-time agreement: every rank checks that all ranks registered the same layers
// with the same settings, before the first exchange. No per-call cost.
#pragma once

#include <span>
#include <string>

#include "gradcomm/communicator.h"
#include "gradcomm/layer.h"

namespace gradcomm {

// Throws gradcomm::Error (kSizeMismatch) on every rank when any rank's layers or
// `settings` differ, naming the first differing layer (or the settings) and the ranks.
// Costs two small allreduces (plus an allgather of descriptions only on a mismatch).
void check_agreement(Communicator& comm, std::span<const LayerSpec> layers,
                     const std::string& settings, const std::string& what);

}  // namespace gradcomm
