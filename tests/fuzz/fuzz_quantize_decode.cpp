// libFuzzer target: QuantizeCompressor::decode on damaged payloads (bucket headers, codes,
// padding) after real encodes on up to 6 simulated ranks.
#include "fuzz/fuzz_util.h"
#include "gradcomm/quantize.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace gradcomm;
  fuzz::Input in(data, size);
  QuantizeOptions o;
  o.bits = 1 + in.u8() % 8;
  o.bucket_size = 8 * (1 + in.u8() % 64);
  const std::uint8_t flags = in.u8();
  o.rounding = flags & 1 ? Rounding::kStochastic : Rounding::kNearest;
  o.error_feedback = (flags & 2) != 0;
  o.quantize_1d = (flags & 4) != 0;
  o.seed = flags;
  fuzz::fuzz_decode(in, [&] { return std::make_unique<QuantizeCompressor>(o); });
  return 0;
}
