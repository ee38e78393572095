// libFuzzer target: DgcCompressor::decode on damaged payloads (sparse slots and the dense
// fallback), after real encodes on up to 6 simulated ranks.
#include "fuzz/fuzz_util.h"
#include "gradcomm/dgc.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace gradcomm;
  fuzz::Input in(data, size);
  DgcOptions o;
  o.density = (1.0 + in.u8()) / 256.0;
  o.warmup_densities = {};
  const std::uint8_t flags = in.u8();
  o.value_dtype = flags & 1 ? DType::kFloat16 : DType::kFloat32;
  o.dense_dtype = flags & 2 ? DType::kFloat16 : DType::kFloat32;
  o.selection = flags & 4 ? DgcSelection::kExact : DgcSelection::kSampled;
  o.dense_fallback = (flags & 8) != 0;
  o.nesterov = (flags & 16) != 0;
  fuzz::fuzz_decode(in, [&] { return std::make_unique<DgcCompressor>(o); });
  return 0;
}
