// The multiple-choice knapsack of L-GreCo (docs/algorithms/lgreco.md, "The DP"):
//   DP[l][b] = min over c of DP[l-1][b - e[l][c]] + bytes[l][c],  DP[-1][b] = 0,
// DP[l][b] the fewest bytes for layers 0..l with binned error at most b.
#include <cmath>
#include <limits>

#include "gradcomm/lgreco.h"

namespace gradcomm {

namespace {
// "No plan": far above any real total (sums of wire bytes), and adding one more layer's
// bytes cannot wrap around.
constexpr std::uint64_t kInfeasible = std::numeric_limits<std::uint64_t>::max() / 4;
constexpr std::size_t kMaxCandidates = 255;  // choices are stored as bytes
}  // namespace

std::int64_t lgreco_error_bins(double error, double budget, int bins) {
  if (!std::isfinite(error) || error < 0) return -1;
  if (!(budget > 0)) return error == 0 ? 0 : -1;
  const double width = budget / bins;
  const double e = std::ceil(error / width);
  return e > bins ? -1 : static_cast<std::int64_t>(e);
}

const LgrecoPlan& LgrecoKnapsack::solve(const LgrecoTable& table,
                                        std::span<const std::uint32_t> default_choice, int bins) {
  const std::size_t L = table.layers, C = table.candidates;
  GRADCOMM_CHECK_ARG(bins >= 1 && bins <= (1 << 24), "LgrecoKnapsack: bins ", bins,
                     " outside [1, 2^24]");
  GRADCOMM_CHECK_ARG(C >= 1 && C <= kMaxCandidates, "LgrecoKnapsack: ", C,
                     " candidates (1..", kMaxCandidates, ")");
  GRADCOMM_CHECK(table.bytes.size() == L * C && table.error.size() == L * C &&
                     default_choice.size() == L,
                 ErrorCode::kSizeMismatch, "LgrecoKnapsack: table of ", L, " layers x ", C,
                 " candidates has ", table.bytes.size(), " byte and ", table.error.size(),
                 " error entries; ", default_choice.size(), " default choices");
  for (std::size_t l = 0; l < L; ++l) {
    GRADCOMM_CHECK_ARG(default_choice[l] < C, "LgrecoKnapsack: layer ", l, " default candidate ",
                       default_choice[l], " of ", C);
  }

  LgrecoPlan& plan = plan_;
  plan.choice.assign(default_choice.begin(), default_choice.end());
  plan.bytes = 0;
  plan.error = 0;
  plan.budget = 0;
  plan.bins_used = 0;
  plan.pinned = 0;
  plan.fallback = false;

  // Layers with a finite default take part; the others keep it and stay out of the budget
  // (an average over ranks that met a NaN is NaN on every rank, so all pin the same).
  planned_.clear();
  std::uint64_t default_bytes = 0;
  for (std::size_t l = 0; l < L; ++l) {
    const std::uint64_t b0 = table.bytes_at(l, default_choice[l]);
    plan.bytes += b0;
    const double e0 = table.error_at(l, default_choice[l]);
    if (std::isfinite(e0) && e0 >= 0) {
      planned_.push_back(l);
      plan.budget += e0;
      default_bytes += b0;
    } else {
      plan.pinned += 1;
    }
  }
  const double default_error = plan.budget;
  plan.error = default_error;

  const std::size_t P = planned_.size();
  const std::size_t width = static_cast<std::size_t>(bins) + 1;
  bins_.resize(P * C);
  for (std::size_t i = 0; i < P; ++i) {
    for (std::size_t c = 0; c < C; ++c) {
      bins_[i * C + c] = lgreco_error_bins(table.error_at(planned_[i], c), plan.budget, bins);
    }
  }
  prev_.assign(width, 0);  // no layers yet: 0 bytes at every budget
  cur_.resize(width);
  choice_.resize(P * width);
  for (std::size_t i = 0; i < P; ++i) {
    const std::size_t l = planned_[i];
    std::fill(cur_.begin(), cur_.end(), kInfeasible);
    std::uint8_t* pick = choice_.data() + i * width;
    std::fill(pick, pick + width, std::uint8_t{0});
    for (std::size_t c = 0; c < C; ++c) {
      const std::int64_t e = bins_[i * C + c];
      if (e < 0) continue;
      const std::uint64_t s = table.bytes_at(l, c);
      const std::size_t shift = static_cast<std::size_t>(e);
      // Strictly less: the lower candidate index wins a tie, on every rank alike.
      for (std::size_t b = shift; b < width; ++b) {
        const std::uint64_t v = prev_[b - shift] + s;
        if (v < cur_[b]) {
          cur_[b] = v;
          pick[b] = static_cast<std::uint8_t>(c);
        }
      }
    }
    for (std::size_t b = 0; b < width; ++b) cur_[b] = std::min(cur_[b], kInfeasible);
    prev_.swap(cur_);
  }

  const std::uint64_t best = prev_[width - 1];
  if (best >= kInfeasible || best > default_bytes) {
    plan.fallback = true;
    plan.bins_used = -1;
    return plan;
  }
  // The smallest binned error that reaches the fewest bytes.
  std::size_t b = 0;
  while (prev_[b] != best) ++b;
  plan.bins_used = static_cast<std::int64_t>(b);
  plan.error = 0;
  std::uint64_t planned_bytes = 0;
  for (std::size_t i = P; i-- > 0;) {
    const std::size_t l = planned_[i];
    const std::uint32_t c = choice_[i * width + b];
    plan.choice[l] = c;
    plan.error += table.error_at(l, c);
    planned_bytes += table.bytes_at(l, c);
    b -= static_cast<std::size_t>(bins_[i * C + c]);
  }
  GRADCOMM_CHECK(planned_bytes == best, ErrorCode::kInternal, "LgrecoKnapsack: backtracked ",
                 planned_bytes, " bytes, the DP said ", best);
  plan.bytes = plan.bytes - default_bytes + planned_bytes;
  return plan;
}

}  // namespace gradcomm
