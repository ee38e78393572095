// "quant": the k-bit max-min quantizer with error feedback (include/gradcomm/quantize.h),
// nearest rounding, buckets of 512 elements, --bits bits per element, through the
// Exchanger. Its payloads are not summable: every rank allgathers all p of them and
// dequantizes them in rank order. 1-D layers (--model's biases and norms) are allreduced
// in fp32, as in training.
//
// -c bound, for the first step of a fresh runner (the residual is 0, so x = g). With
// u = 2^-24, L = 2^b - 1, and for the bucket holding element i on rank r: m_r, M_r its
// min and max and w_r = (M_r - m_r) / L its exact unit,
//   |out_i - avg_i| <= mean_r(w_r) / 2 + (p + 16) u + 4u |avg_i|,
// that is the sum over ranks of unit_r / 2 divided by p, plus every rounding of the
// encoder, decoder and sum (kernels/cpu/quantize_math.h), each at its worst:
//  - the sent unit U = fl(w) (one rounding of a double): U/2 <= w/2 + u, as w < 2;
//  - s = x - m is exact: both are multiples of 2^-23 in [-1, 1) (bench_data.h);
//  - t = fl(s * fl(1/U)) is within (2u + u^2) s/U of s/U, with s/U <= L/(1-u); the code
//    q = floor(fl(t + 1/2)) <= L, and fl(t + 1/2) errs by <= u(t + 1/2). So
//    |q - s/U| <= 1/2 + 3uL + u/2 (+ O(u^2 L)), and with U <= 2(1+u)/L: |qU - s| <= U/2 + 7u;
//  - the decoded fl(m + fl(qU)) adds two roundings of values below 2(1+u) and 1 + 3u: 3u;
//  so each rank's decoded value d_r is within w_r/2 + 11u of x_r, and |d_r| <= 1 + 3u.
//  - the rank-order fp32 sum of the d_r scaled by fl(1/p) is within p u + 4u |avg_d| of
//    their average (fp32_average_bound's argument), and |avg_d| <= |avg| + 1 + 11u adds 4u.
//  11u + 4u (+ O(u^2)) is below 16u.
// A check at any later step would also need the residuals the ranks carried in.
#include <algorithm>
#include <cmath>
#include <limits>

#include "gradcomm/quantize.h"
#include "gradcomm_bench/runner.h"

namespace gradcomm::bench {

CheckBound quantized_bound(int bits, int world_size) {
  // The benchmark's ranges are below 2, so mean_r(w_r) / 2 < 1 / L.
  const double u = std::ldexp(1.0, -24), levels = (1 << bits) - 1;
  return {1.0 / levels + (world_size + 16) * u, 4 * u,
          std::to_string(bits) + "-bit max-min, nearest: |out-avg| <= mean over ranks of unit/2 + (p+16)*2^-24 + "
          "2^-22*|avg| (unit: the rank's bucket range / (2^b-1))"};
}

std::size_t count_wrong_quantized(std::span<const TensorView> outs, const DenseReference& dense,
                                  std::span<const int> bits, std::size_t bucket_size) {
  GRADCOMM_CHECK_ARG(bits.size() == outs.size() && bucket_size > 0, "gradcomm-bench: ", bits.size(),
                     " bit widths for ", outs.size(), " layers, bucket ", bucket_size);
  const int p = dense.world_size();
  const CheckBound fp32 = fp32_average_bound(p);
  const double slack = 16 * std::ldexp(1.0, -24);
  std::size_t wrong = 0;
  std::uint64_t first = 0;
  for (std::size_t l = 0; l < outs.size(); ++l) {
    const std::span<const float> out = outs[l].span<const float>("bench output");
    if (bits[l] == 0) {
      wrong += count_outside(out, first, dense, fp32);
      first += out.size();
      continue;
    }
    const double levels = (1 << bits[l]) - 1;
    for (std::size_t start = 0; start < out.size(); start += bucket_size) {
      const std::size_t len = std::min(bucket_size, out.size() - start);
      double units = 0;
      for (int r = 0; r < p; ++r) {
        float lo = std::numeric_limits<float>::infinity(), hi = -lo;
        for (std::size_t i = 0; i < len; ++i) {
          const float x = gradient_value(dense.seed(), r, first + start + i);
          lo = std::min(lo, x);
          hi = std::max(hi, x);
        }
        units += (static_cast<double>(hi) - lo) / levels;
      }
      CheckBound b = fp32;
      b.abs += units / p / 2 + slack;
      wrong += count_outside(out.subspan(start, len), first + start, dense, b);
    }
    first += out.size();
  }
  return wrong;
}

namespace {

class QuantRunner final : public ExchangerRunner {
 public:
  QuantRunner(Communicator& comm, const QuantizeOptions& options, std::vector<LayerSpec> layers,
              const RunnerConfig& config)
      : ExchangerRunner(comm, std::make_unique<QuantizeCompressor>(options), std::move(layers), config,
                        quantized_bound(options.bits, comm.size())),
        bucket_size_(options.bucket_size) {
    const auto& quantizer = static_cast<const QuantizeCompressor&>(exchanger().compressor());
    for (std::size_t l = 0; l < quantizer.num_layers(); ++l) {
      bits_.push_back(quantizer.is_quantized(l) ? quantizer.layer_bits(l) : 0);
    }
  }

  std::size_t count_wrong(std::span<const TensorView> outs, const DenseReference& dense) const override {
    return count_wrong_quantized(outs, dense, bits_, bucket_size_);
  }

 private:
  std::size_t bucket_size_;
  std::vector<int> bits_;  // per layer; 0: allreduced in fp32
};

}  // namespace

std::unique_ptr<Runner> make_quant_runner(Communicator& comm, std::vector<LayerSpec> layers,
                                          const RunnerConfig& config) {
  QuantizeOptions options;
  options.bits = config.bits;
  return std::make_unique<QuantRunner>(comm, options, std::move(layers), config);
}

}  // namespace gradcomm::bench
