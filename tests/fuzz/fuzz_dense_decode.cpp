// libFuzzer target: DenseCompressor::decode (fp32 and fp16 on the wire) on damaged sums.
#include "fuzz/fuzz_util.h"
#include "gradcomm/dense.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace gradcomm;
  fuzz::Input in(data, size);
  const DType wire = in.u8() & 1 ? DType::kFloat16 : DType::kFloat32;
  fuzz::fuzz_decode(in, [&] { return std::make_unique<DenseCompressor>(DenseOptions{wire}); });
  return 0;
}
