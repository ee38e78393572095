// libFuzzer target: the compressor state loaders a checkpoint feeds (DgcCompressor,
// QuantizeCompressor, OneBitErrorState). Starts from a real saved state after a few steps
// and damages it; load must accept it or throw kCorruptPayload, never read out of bounds.
#include "fuzz/fuzz_util.h"
#include "gradcomm/dgc.h"
#include "gradcomm/onebit.h"
#include "gradcomm/quantize.h"

namespace {

using namespace gradcomm;

std::unique_ptr<Compressor> make(std::uint8_t which) {
  if (which % 2 == 0) {
    DgcOptions o;
    o.density = 0.05;
    o.warmup_densities = {0.5};
    o.steps_per_epoch = 2;
    return std::make_unique<DgcCompressor>(o);
  }
  return std::make_unique<QuantizeCompressor>(QuantizeOptions{.bits = 3, .bucket_size = 64});
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  const std::uint8_t which = in.u8();
  const int p = 1 + in.u8() % 4;
  const std::size_t n = in.u16() % 1000;
  if (which % 3 == 2) {
    OneBitErrorState state(n, p);
    std::vector<float> noise(state.padded_numel());
    fuzz::fill_gradient(noise, 0, which);
    if (!noise.empty()) std::memcpy(state.worker_error().data(), noise.data(), noise.size() * sizeof(float));
    std::vector<std::byte> blob = state.save();
    fuzz::mutate(blob, in);
    OneBitErrorState fresh(n, p);
    fuzz::expect_clean([&] { fresh.load(blob); });
    return 0;
  }
  const std::vector<LayerSpec> layers = {{"a", n, 2}, {"b", 7, 1}, {"c", n / 3, 2}};
  auto source = make(which);
  source->setup(layers, p, 0);
  std::vector<float> grad;
  std::vector<std::byte> payload;
  for (int step = 0; step < 3; ++step) {
    source->set_step(step);
    for (std::size_t l = 0; l < layers.size(); ++l) {
      grad.resize(layers[l].numel);
      fuzz::fill_gradient(grad, 0, static_cast<std::uint32_t>(step));
      const LayerWire w = source->wire(l);
      payload.resize(w.bytes());
      source->encode(l, TensorView::of(std::span<float>(grad)), TensorView(payload.data(), w.count, w.dtype));
    }
  }
  std::vector<std::byte> blob = source->save_state();
  fuzz::mutate(blob, in);
  auto target = make(which);
  target->setup(layers, p, 0);
  fuzz::expect_clean([&] { target->load_state(blob); });
  return 0;
}
