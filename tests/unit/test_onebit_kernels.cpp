// The 1-bit CPU kernels against plain-loop oracles (bitwise where the arithmetic is the
// same), the padding and wire-size rules, and OneBitErrorState's blob.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gradcomm/onebit.h"
#include "kernels/cpu/onebit_kernels.h"

namespace gradcomm {
namespace {

std::vector<float> random_floats(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

bool bit(const std::vector<std::uint8_t>& bits, std::size_t i) { return (bits[i / 8] >> (i % 8)) & 1u; }

TEST(OneBitKernels, PackMatchesPlainLoopBitwiseForEveryTailLength) {
  const float scale = 0.37f;
  for (std::size_t x_count = 0; x_count <= 40; ++x_count) {
    const std::size_t count = (x_count + 7) / 8 * 8 + 16;  // padding beyond x
    std::vector<float> x = random_floats(x_count, static_cast<unsigned>(x_count));
    std::vector<float> err = random_floats(count, 100 + static_cast<unsigned>(x_count));
    for (float& e : err) e *= 0.1f;
    if (x_count > 5) {
      x[1] = 0.0f;  // 0 counts as +
      x[2] = -0.0f;
      err[1] = err[2] = 0.0f;
      x[3] = std::numeric_limits<float>::infinity();  // non-finite counts as 0
      x[4] = std::nanf("");
    }
    std::vector<float> want_err = err;
    std::vector<std::uint8_t> want(count / 8, 0);
    for (std::size_t i = 0; i < count; ++i) {
      const float xi = i < x_count && std::isfinite(x[i]) ? x[i] : 0.0f;
      const float v = xi + want_err[i];
      const bool positive = v >= 0.0f;
      if (positive) want[i / 8] |= static_cast<std::uint8_t>(1u << (i % 8));
      want_err[i] = v - (positive ? scale : -scale);
    }
    std::vector<std::uint8_t> got(count / 8, 0xAA);
    kernels::onebit_pack_with_error(x.data(), x_count, err.data(), count, scale, got.data());
    EXPECT_EQ(got, want) << "x_count " << x_count;
    EXPECT_EQ(err, want_err) << "x_count " << x_count;
    if (x_count > 5) {
      EXPECT_TRUE(bit(got, 1) && bit(got, 2)) << "+0 and -0 are sent as +";
    }
  }
}

TEST(OneBitKernels, SumOfSquaresIsAccurateCountsNonFiniteAndSurvivesFp32Overflow) {
  const std::size_t count = 4096 + 24, x_count = 3001;
  std::vector<float> x = random_floats(x_count, 7), err = random_floats(count, 8);
  x[10] = std::nanf("");
  x[2000] = -std::numeric_limits<float>::infinity();
  double want = 0;
  for (std::size_t i = 0; i < count; ++i) {
    const double v = double(i < x_count && std::isfinite(x[i]) ? x[i] : 0.0f) + double(err[i]);
    const float vf = static_cast<float>(v);  // the kernel adds in fp32
    want += double(vf) * double(vf);
  }
  const kernels::SumSq got = kernels::onebit_compensated_sumsq(x.data(), x_count, err.data(), count);
  EXPECT_EQ(got.nonfinite, 2u);
  EXPECT_NEAR(got.sumsq, want, 1e-6 * want);

  // Squares above fp32's range (|v| > 1.8e19) must not turn the scale into inf.
  std::vector<float> big(512, 3e20f), zeros(512, 0.0f);
  const kernels::SumSq huge = kernels::onebit_compensated_sumsq(big.data(), big.size(), zeros.data(), 512);
  EXPECT_TRUE(std::isfinite(huge.sumsq));
  EXPECT_NEAR(kernels::onebit_scale(huge.sumsq, 512), 3e20f, 3e20f * 1e-6f);
  EXPECT_EQ(kernels::onebit_scale(0.0, 0), 0.0f);
}

TEST(OneBitKernels, ServerSumsRanksInOrderAndUnpackHonoursOddCounts) {
  const int ranks = 3;
  const std::size_t count = 8 * 133;  // more than one internal block
  const std::size_t stride = sizeof(float) + count / 8 + 3;
  std::vector<std::uint8_t> segments(ranks * stride);
  std::mt19937 gen(9);
  const float scales[ranks] = {0.5f, 0.125f, 3.0f};
  for (int r = 0; r < ranks; ++r) {
    std::memcpy(segments.data() + r * stride, &scales[r], sizeof(float));
    for (std::size_t b = 0; b < count / 8; ++b) segments[r * stride + sizeof(float) + b] = gen() & 0xff;
  }
  std::vector<float> err = random_floats(count, 10), want = err;
  double want_sumsq = 0;
  for (std::size_t i = 0; i < count; ++i) {
    float acc = 0.0f;
    for (int r = 0; r < ranks; ++r) {
      const bool positive = (segments[r * stride + sizeof(float) + i / 8] >> (i % 8)) & 1u;
      acc += positive ? scales[r] : -scales[r];
    }
    want[i] = acc / static_cast<float>(ranks) + want[i];
    want_sumsq += double(want[i]) * double(want[i]);
  }
  const double sumsq = kernels::onebit_server_accumulate(segments.data(), stride, ranks, err.data(), count);
  EXPECT_EQ(err, want);
  EXPECT_NEAR(sumsq, want_sumsq, 1e-6 * want_sumsq);

  for (std::size_t n : {0u, 1u, 7u, 8u, 13u, 1000u}) {
    std::vector<float> out(n + 1, 42.0f);
    kernels::onebit_unpack(segments.data() + sizeof(float), 0.25f, out.data(), n);
    for (std::size_t i = 0; i < n; ++i) {
      const bool positive = (segments[sizeof(float) + i / 8] >> (i % 8)) & 1u;
      ASSERT_EQ(out[i], positive ? 0.25f : -0.25f) << "n " << n << " i " << i;
    }
    EXPECT_EQ(out[n], 42.0f) << "wrote past the end";
  }
}

TEST(OneBitSizes, PaddingWorkspaceAndWire) {
  EXPECT_EQ(onebit_padded_numel(0, 4), 0u);
  EXPECT_EQ(onebit_padded_numel(1, 4), 32u);
  EXPECT_EQ(onebit_padded_numel(32, 4), 32u);
  EXPECT_EQ(onebit_padded_numel(33, 4), 64u);
  EXPECT_EQ(onebit_padded_numel(5, 3), 24u);
  EXPECT_THROW(onebit_padded_numel(5, 0), Error);
  // n = 1000 over 4 ranks: N = 1024, chunks of 256 signs = 32 bytes, after a 4-byte scale.
  const std::size_t one[1] = {1000};
  EXPECT_EQ(onebit_workspace_bytes(one, 4), 9u * 36u);
  EXPECT_EQ(onebit_wire_bytes(one, 4), 2u * 3u * 36u);
  // Segments are padded to 4 bytes and empty tensors take no room.
  const std::size_t several[3] = {1000, 0, 24};  // 24 over 3 ranks: 1 byte of signs -> 8
  EXPECT_EQ(onebit_wire_bytes(several, 3), 2u * 2u * ((4u + 44u) + 8u));
  EXPECT_EQ(onebit_wire_bytes(several, 1), 0u);
  // 100 MB of fp32 over 4 ranks: within 0.01% of 2 (p-1)/p * n/8.
  const std::size_t big[1] = {25u << 20};
  const double ideal = 2.0 * 3.0 / 4.0 * double(big[0]) / 8.0;
  EXPECT_NEAR(double(onebit_wire_bytes(big, 4)), ideal, 1e-4 * ideal);
}

TEST(OneBitErrorState, SavesLoadsAndRejectsOtherShapes) {
  OneBitErrorState empty(0, 3);
  EXPECT_EQ(empty.padded_numel(), 0u);
  EXPECT_EQ(empty.server_error().numel(), 0u);
  OneBitErrorState restored_empty(0, 3);
  restored_empty.load(empty.save());

  OneBitErrorState state(100, 4);
  EXPECT_EQ(state.padded_numel(), 128u);
  EXPECT_EQ(state.chunk_numel(), 32u);
  auto ew = state.worker_error().span<float>();
  auto es = state.server_error().span<float>();
  for (std::size_t i = 0; i < ew.size(); ++i) ew[i] = static_cast<float>(i) * 0.5f;
  for (std::size_t i = 0; i < es.size(); ++i) es[i] = -static_cast<float>(i);
  const std::vector<std::byte> blob = state.save();
  OneBitErrorState copy(100, 4);
  copy.load(blob);
  EXPECT_EQ(copy.save(), blob);
  state.zero();
  for (float e : state.worker_error().span<float>()) ASSERT_EQ(e, 0.0f);

  OneBitErrorState other_world(100, 2);
  EXPECT_THROW(other_world.load(blob), Error);
  std::vector<std::byte> bad = blob;
  bad[0] = std::byte{0};
  try {
    copy.load(bad);
    ADD_FAILURE() << "bad magic accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kCorruptPayload);
  }
  EXPECT_THROW(copy.load(std::span<const std::byte>(blob).first(10)), Error);
}

}  // namespace
}  // namespace gradcomm
