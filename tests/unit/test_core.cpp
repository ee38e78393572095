#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <vector>

#include "core/float16.h"
#include "gradcomm/gradcomm.h"
#include "kernels/cpu/dense_kernels.h"

namespace gradcomm {
namespace {

TEST(Error, CarriesCodeMessageAndLocation) {
  try {
    GRADCOMM_CHECK(1 + 1 == 3, ErrorCode::kSizeMismatch, "n=", 5, " k=", 7);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kSizeMismatch);
    EXPECT_EQ(e.message(), "n=5 k=7");
    EXPECT_NE(e.where().find("test_core.cpp"), std::string::npos) << e.where();
    EXPECT_NE(std::string(e.what()).find("size mismatch"), std::string::npos) << e.what();
  }
}

TEST(TensorView, SizesAndDescribe) {
  EXPECT_EQ(dtype_size(DType::kFloat32), 4u);
  EXPECT_EQ(dtype_size(DType::kFloat16), 2u);
  EXPECT_EQ(dtype_size(DType::kBFloat16), 2u);
  EXPECT_EQ(dtype_size(DType::kInt32), 4u);
  EXPECT_EQ(dtype_size(DType::kUInt32), 4u);
  EXPECT_EQ(dtype_size(DType::kUInt8), 1u);
  std::vector<float> v(7);
  TensorView t = TensorView::of(std::span<float>(v));
  EXPECT_EQ(t.numel(), 7u);
  EXPECT_EQ(t.nbytes(), 28u);
  EXPECT_EQ(t.describe(), "float32[7] on cpu");
  EXPECT_EQ(t.slice(2, 5).numel(), 5u);
  EXPECT_EQ(t.slice(2, 5).data(), v.data() + 2);
  EXPECT_EQ(t.slice(7, 0).numel(), 0u);
  EXPECT_THROW(t.slice(3, 5), Error);
  EXPECT_THROW(t.span<std::int32_t>(), Error);
  TensorView empty;
  EXPECT_TRUE(empty.empty());
}

TEST(Half, RoundTripsAndRounds) {
  for (float x : {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f, 5.9604644775390625e-08f}) {
    EXPECT_EQ(half_to_float(float_to_half(x)), x) << x;
  }
  EXPECT_EQ(float_to_half(1.0f), 0x3c00);
  EXPECT_TRUE(std::isinf(half_to_float(float_to_half(1e6f))));
  EXPECT_TRUE(std::isnan(half_to_float(float_to_half(std::nanf("")))));
  // 1 + 2^-11 is halfway between 1 and the next half: ties to even (1.0).
  EXPECT_EQ(half_to_float(float_to_half(1.0f + 0x1p-11f)), 1.0f);
  EXPECT_EQ(half_to_float(float_to_half(1.0f + 0x1p-11f + 0x1p-20f)), 1.0f + 0x1p-10f);
  // Every half value survives half -> float -> half.
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const float f = half_to_float(static_cast<std::uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_half(f), h) << h;
  }
}

TEST(BFloat16, RoundTripsAndRounds) {
  for (float x : {0.0f, -0.0f, 1.0f, -2.5f, 0x1p-133f, 3.3895313892515355e38f}) {
    EXPECT_EQ(bfloat16_to_float(float_to_bfloat16(x)), x) << x;
  }
  EXPECT_EQ(float_to_bfloat16(1.0f), 0x3f80);
  // 1 + 2^-8 is halfway between 1 and the next bfloat16: ties to even (1.0); above it rounds up.
  EXPECT_EQ(bfloat16_to_float(float_to_bfloat16(1.0f + 0x1p-8f)), 1.0f);
  EXPECT_EQ(bfloat16_to_float(float_to_bfloat16(1.0f + 0x1p-8f + 0x1p-20f)), 1.0f + 0x1p-7f);
  EXPECT_TRUE(std::isinf(bfloat16_to_float(float_to_bfloat16(std::numeric_limits<float>::max()))));
  // A NaN whose payload sits in the dropped bits stays NaN instead of becoming Inf.
  EXPECT_TRUE(std::isnan(bfloat16_to_float(float_to_bfloat16(std::bit_cast<float>(0x7f800001u)))));
  for (std::uint32_t b = 0; b < 0x10000; ++b) {
    const float f = bfloat16_to_float(static_cast<std::uint16_t>(b));
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_bfloat16(f), b) << b;
  }
}

TEST(DenseKernels, ZeroNonFinite) {
  std::vector<float> in = {1, std::numeric_limits<float>::infinity(), -3, std::nanf(""), 5};
  std::vector<float> out(in.size());
  EXPECT_EQ(kernels::copy_zeroing_nonfinite(in.data(), out.data(), in.size()), 2u);
  EXPECT_EQ(out, (std::vector<float>{1, 0, -3, 0, 5}));
  std::vector<std::uint16_t> half(in.size());
  EXPECT_EQ(kernels::to_half_zeroing_nonfinite(in.data(), half.data(), in.size()), 2u);
  kernels::half_to_float_scaled(half.data(), 0.5f, out.data(), in.size());
  EXPECT_EQ(out, (std::vector<float>{0.5f, 0, -1.5f, 0, 2.5f}));
  EXPECT_EQ(kernels::count_nonfinite(in.data(), in.size()), 2u);
  EXPECT_EQ(kernels::count_nonfinite(in.data(), 0), 0u);
}

TEST(DenseCompressor, RejectsBadSettingsAndState) {
  EXPECT_THROW(DenseCompressor({DType::kInt32}), Error);
  DenseCompressor c;
  std::vector<LayerSpec> layers = {{"a", 3, 2, false}};
  c.setup(layers, 2, 0);
  EXPECT_EQ(c.wire(0).bytes(), 12u);
  std::byte junk[4] = {};
  EXPECT_THROW(c.load_state(std::span<const std::byte>(junk, 4)), Error);
}

}  // namespace
}  // namespace gradcomm
