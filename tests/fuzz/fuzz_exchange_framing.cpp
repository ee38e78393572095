// libFuzzer target: the Exchanger's step framing (allreduce status words, allgather headers
// of layer and non-finite counts) and the compressors' decoders behind it, fed the blocks
// of "other ranks" that the fuzzer damages. This is rank 0 of p over a loopback
// communicator: a collective completes at once, every other rank's contribution is a copy
// of this rank's with bits flipped as the input says (a corrupt link or a buggy peer).
#include <string>

#include "fuzz/fuzz_util.h"
#include "gradcomm/dgc.h"
#include "gradcomm/exchanger.h"
#include "gradcomm/quantize.h"

namespace {

using namespace gradcomm;

class Done final : public Work {
 public:
  void wait() override {}
  bool test() override { return true; }
};

class LoopbackCommunicator final : public Communicator {
 public:
  LoopbackCommunicator(int size, fuzz::Input& in) : size_(size), in_(in) {}
  int rank() const override { return 0; }
  int size() const override { return size_; }
  Device device() const override { return Device::kCpu; }
  std::string describe() const override { return "LoopbackCommunicator(fuzz)"; }

  // The agreement's max/min and the Exchanger's sums see equal inputs from every rank;
  // a sum of equal fp32 payloads is only scaled, so a copy is as good for the decoders.
  WorkHandle allreduce(TensorView send, TensorView recv, ReduceOp) override {
    check_allreduce(send, recv);
    if (send.data() != recv.data() && send.nbytes()) std::memcpy(recv.data(), send.data(), send.nbytes());
    return done();
  }
  WorkHandle allgather(TensorView send, TensorView recv) override {
    check_allgather(send, recv);
    auto* out = static_cast<std::byte*>(recv.data());
    for (int r = 0; r < size_; ++r) {
      if (send.nbytes()) std::memcpy(out + r * send.nbytes(), send.data(), send.nbytes());
    }
    fuzz::flip(std::span<std::byte>(out + send.nbytes(), recv.nbytes() - send.nbytes()), in_);
    return done();
  }
  WorkHandle allgatherv(TensorView send, TensorView recv, std::span<const std::size_t> counts) override {
    check_allgatherv(send, recv, counts);
    if (recv.nbytes()) std::memset(recv.data(), 0, recv.nbytes());
    if (send.nbytes()) std::memcpy(recv.data(), send.data(), send.nbytes());
    return done();
  }
  WorkHandle alltoall(TensorView send, TensorView recv) override {
    check_alltoall(send, recv);
    if (send.data() != recv.data() && send.nbytes()) std::memcpy(recv.data(), send.data(), send.nbytes());
    return done();
  }
  WorkHandle alltoallv(TensorView send, std::span<const std::size_t> send_counts, TensorView recv,
                       std::span<const std::size_t> recv_counts) override {
    check_alltoallv(send, send_counts, recv, recv_counts);
    if (recv.nbytes()) std::memset(recv.data(), 0, recv.nbytes());
    return done();
  }
  WorkHandle broadcast(TensorView, int) override { return done(); }
  WorkHandle barrier() override { return done(); }
  void abort(const std::string& reason) override { GRADCOMM_THROW(ErrorCode::kCommunication, "abort: ", reason); }

 private:
  static WorkHandle done() { return WorkHandle(new Done); }
  int size_;
  fuzz::Input& in_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  const int p = 2 + in.u8() % 5;
  const std::uint8_t which = in.u8();
  ExchangerOptions options;
  options.bucket_bytes = 64 + 64 * std::size_t{in.u8()};
  options.nonfinite = static_cast<NonFinitePolicy>(in.u8() % 3);
  const std::size_t n = 1 + in.u16() % 2000;
  const std::vector<LayerSpec> layers = {{"a", n, 2}, {"b", 10, 1}, {"c", n / 2 + 1, 2}, {"d", 3, 2}};
  std::unique_ptr<Compressor> compressor;
  if (which % 2 == 0) {
    DgcOptions o;
    o.density = (1.0 + which) / 256.0;
    o.warmup_densities = {};
    o.dense_fallback = (which & 4) != 0;
    o.value_dtype = which & 8 ? DType::kFloat16 : DType::kFloat32;
    compressor = std::make_unique<DgcCompressor>(o);
  } else {
    compressor = std::make_unique<QuantizeCompressor>(QuantizeOptions{.bits = 1 + which % 8, .bucket_size = 64});
  }
  LoopbackCommunicator comm(p, in);
  Exchanger ex(comm, std::move(compressor), layers, options);
  std::vector<std::vector<float>> grads, outs;
  std::vector<TensorView> grad_views, out_views;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    grads.emplace_back(layers[l].numel);
    outs.emplace_back(layers[l].numel);
    fuzz::fill_gradient(grads[l], 0, static_cast<std::uint32_t>(l));
  }
  for (std::size_t l = 0; l < layers.size(); ++l) {
    grad_views.push_back(TensorView::of(std::span<float>(grads[l])));
    out_views.push_back(TensorView::of(std::span<float>(outs[l])));
  }
  // A damaged non-finite count is indistinguishable from a real one: kNonFinite is a
  // correct outcome under the error policy.
  fuzz::expect_clean([&] {
    for (int step = 0; step < 2; ++step) ex.exchange(grad_views, out_views);
  }, ErrorCode::kNonFinite);
  return 0;
}
