#include <chrono>
#include <cmath>
#include <limits>

#include "gradcomm/lgreco.h"

namespace gradcomm {

namespace {
double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}
}  // namespace

LgrecoPlanner::LgrecoPlanner(Communicator& comm, LgrecoCompressor& compressor)
    : comm_(comm), compressor_(compressor) {
  const LgrecoTable& local = compressor_.local_table();
  GRADCOMM_CHECK_ARG(local.layers == compressor_.choice().size() && local.candidates >= 1,
                     "LgrecoPlanner: the compressor is not set up (hand it to an Exchanger first)");
  agreed_ = local;
  errors_.resize(local.error.size());
  knapsack_plan_.choice.assign(compressor_.choice().begin(), compressor_.choice().end());
}

bool LgrecoPlanner::after_step() {
  if (!compressor_.table_ready()) return false;
  const LgrecoTable& local = compressor_.local_table();
  const std::size_t L = local.layers, C = local.candidates;
  GRADCOMM_CHECK(local.error.size() == errors_.size(), ErrorCode::kInternal,
                 "LgrecoPlanner: table changed shape from ", errors_.size(), " to ",
                 local.error.size(), " entries");

  // One allreduce of the local errors; the bytes are a pure function of the settings and
  // the same everywhere. The Communicator's sum is bitwise the same on every rank, so every
  // rank solves the same table and reaches the same plan with no broadcast.
  auto start = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < errors_.size(); ++i) errors_[i] = static_cast<float>(local.error[i]);
  if (!errors_.empty()) {
    comm_.allreduce_inplace(TensorView(errors_.data(), errors_.size(), DType::kFloat32), ReduceOp::kSum);
  }
  stats_.agree_seconds += seconds_since(start);

  start = std::chrono::steady_clock::now();
  const double inv = 1.0 / comm_.size();
  agreed_.bytes = local.bytes;
  for (std::size_t l = 0; l < L; ++l) {
    for (std::size_t c = 0; c < C; ++c) {
      // A layer the family does not compress is pinned: NaN excludes it from the budget.
      agreed_.error_at(l, c) = compressor_.is_planned(l)
                                   ? static_cast<double>(errors_[l * C + c]) * inv
                                   : std::numeric_limits<double>::quiet_NaN();
    }
  }
  knapsack_plan_ = knapsack_.solve(agreed_, compressor_.default_choice(), compressor_.options().bins);
  for (std::size_t l = 0; l < L; ++l) {
    stats_.changed_layers += knapsack_plan_.choice[l] != compressor_.choice()[l] ? 1 : 0;
  }
  compressor_.apply_plan(knapsack_plan_.choice);
  compressor_.consume_table();
  stats_.replans += 1;
  stats_.solve_seconds += seconds_since(start);
  return true;
}

}  // namespace gradcomm
