// Absurd settings are refused where they are given, before any step: every compressor's
// setup() with an impossible world (size < 1, rank outside it), and each one's options.
// (The per-option checks live in each compressor's own tests; docs/reliability.md lists them.)
#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "gradcomm/dgc.h"
#include "gradcomm/gradcomm.h"
#include "gradcomm/quantize.h"

namespace gradcomm {
namespace {

struct Maker {
  const char* name;
  std::function<std::unique_ptr<Compressor>()> make;
  friend void PrintTo(const Maker& m, std::ostream* os) { *os << m.name; }
};

class ImpossibleWorld : public ::testing::TestWithParam<Maker> {};

TEST_P(ImpossibleWorld, SetupRefusesIt) {
  const std::vector<LayerSpec> layers = {{"w", 100, 2}, {"b", 10, 1}};
  for (auto [world, rank] : {std::pair{0, 0}, std::pair{-1, 0}, std::pair{2, 2}, std::pair{2, -1}}) {
    auto c = GetParam().make();
    try {
      c->setup(layers, world, rank);
      ADD_FAILURE() << GetParam().name << " accepted rank " << rank << " of a world of " << world;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
    }
  }
  auto c = GetParam().make();
  EXPECT_NO_THROW(c->setup(layers, 1, 0)) << "a world of one rank is valid";
}

INSTANTIATE_TEST_SUITE_P(
    Compressors, ImpossibleWorld,
    ::testing::Values(Maker{"dense", [] { return std::make_unique<DenseCompressor>(); }},
                      Maker{"dgc", [] { return std::make_unique<DgcCompressor>(); }},
                      Maker{"quantize", [] { return std::make_unique<QuantizeCompressor>(); }}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace gradcomm
