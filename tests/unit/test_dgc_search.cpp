// DGC's threshold search (kernels/shared/dgc_search.h), the one both devices run: its
// decisions, and the round limit the CPU kernel keeps (the CUDA kernels launch exactly
// kMaxRounds - 1 collect passes after the fused one, each a no-op once the search is
// done; tests/gpu checks that they send the same set).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <vector>

#include "kernels/shared/dgc_search.h"
#include "unit/dgc_reference.h"

namespace gradcomm {
namespace {

namespace dgc = kernels::dgc;

std::uint32_t bits(float x) { return std::bit_cast<std::uint32_t>(x); }

TEST(DgcSearch, FusedCandidatesDoWhenEnoughOrPredictedLow) {
  const std::uint64_t k = 100, low = dgc::low_count(k);
  ASSERT_EQ(low, 80u);
  // At least k at the prediction: the top-k are among them, whatever the estimate.
  dgc::SearchState s = dgc::start_search(bits(2.0f), bits(3.0f), false, 120, k, low);
  EXPECT_TRUE(s.done);
  EXPECT_EQ(s.threshold, bits(3.0f));
  EXPECT_EQ(s.count, 120u);
  EXPECT_EQ(s.rounds, 1);
  // Between low and k at a prediction at or below the estimate: as good as a recount.
  s = dgc::start_search(bits(2.0f), bits(1.5f), false, 90, k, low);
  EXPECT_TRUE(s.done);
  // Too few at a prediction below the estimate: the next pass starts below the prediction.
  s = dgc::start_search(bits(2.0f), bits(1.5f), false, 10, k, low);
  EXPECT_FALSE(s.done);
  EXPECT_EQ(s.t, dgc::lower(bits(1.5f)));
  // Too few above the estimate, an overflow, or no prediction: start at the estimate.
  for (const auto& [predicted, overflow] : {std::pair{bits(3.0f), false}, std::pair{bits(1.0f), true},
                                           std::pair{0u, false}}) {
    s = dgc::start_search(bits(2.0f), predicted, overflow, 10, k, low);
    EXPECT_FALSE(s.done);
    EXPECT_EQ(s.t, bits(2.0f));
    EXPECT_EQ(s.rounds, 1);
  }
}

TEST(DgcSearch, CollectPassesLowerUntilEnoughOrTheLimit) {
  dgc::SearchState s = dgc::start_search(bits(1.0f), 0, false, 0, 100, 80);
  for (int pass = 2; pass <= dgc::kMaxRounds; ++pass) {
    ASSERT_FALSE(s.done) << "pass " << pass;
    const std::uint32_t t = s.t;
    dgc::after_collect(s, 5, 80);
    EXPECT_EQ(s.rounds, pass);
    EXPECT_EQ(s.threshold, t);
  }
  EXPECT_TRUE(s.done) << "at most kMaxRounds passes in all, the fused one included";
  // Enough candidates end it at once; so does the smallest threshold.
  s = dgc::start_search(bits(1.0f), 0, false, 0, 100, 80);
  dgc::after_collect(s, 80, 80);
  EXPECT_TRUE(s.done);
  s = dgc::start_search(1, 0, false, 0, 100, 80);
  dgc::after_collect(s, 3, 80);
  EXPECT_TRUE(s.done);
  EXPECT_EQ(dgc::lower(1), 1u);
  EXPECT_EQ(dgc::lower(bits(1.0f)), bits(0.8f));
}

TEST(DgcSearch, PredictionFollowsTheRiseAndIgnoresNonFinite) {
  EXPECT_EQ(dgc::predicted_threshold(0, 0), 0u);
  EXPECT_EQ(dgc::predicted_threshold(bits(2.0f), 0), bits(2.0f));
  EXPECT_EQ(dgc::predicted_threshold(bits(2.0f), bits(1.5f)), bits(2.5f));
  EXPECT_EQ(dgc::predicted_threshold(bits(2.0f), bits(3.0f)), bits(2.0f));  // no fall
  EXPECT_EQ(dgc::predicted_threshold(bits(3.0e38f), bits(1.0e38f)), bits(3.0e38f));  // would be Inf
}

// Issue 13 fault 9: the CPU made at most 9 collect passes after its fused pass, the GPU up
// to 10, so the two could send different sets when fewer than 0.8k pass. Both now stop
// after kMaxRounds passes in all (the case: dgc_reference.h).
TEST(DgcSearch, StopsAfterTheSamePassLimitAsTheGpu) {
  const testing::RoundLimitCase c;
  const testing::RoundLimitCase::Result r = c.run_on_cpu();
  EXPECT_EQ(r.stats.rounds, dgc::kMaxRounds);
  std::uint32_t t = bits(1.0f);
  for (int lowered = 0; lowered < dgc::kMaxRounds - 2; ++lowered) t = dgc::lower(t);
  EXPECT_EQ(r.stats.threshold, t) << "the last pass collected at 1.0 lowered kMaxRounds - 2 times";
  EXPECT_EQ(r.stats.candidates, c.kN / c.kStride);
  EXPECT_EQ(r.stats.sent, c.kN / c.kStride);
  EXPECT_EQ(r.memory.last, bits(1.0f));
}

}  // namespace
}  // namespace gradcomm
