// measure_links: the alpha-beta costs of the links, from a few allreduces timed at setup,
// combined over all ranks so that every rank builds the same plan.
#include <algorithm>
#include <chrono>
#include <vector>

#include "gradcomm/communicator.h"
#include "gradcomm/error.h"
#include "gradcomm/exchange_plan.h"
#include "kernels/cpu/dgc_kernels.h"

namespace gradcomm {

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::size_t kSmall = 2;  // floats: the latency

// The median, not the fastest: a plan has to predict the steps as they will run, scheduler
// delays included, and one lucky or unlucky sample must not decide it (on oversubscribed
// cores single samples of the same allreduce differed by more than 10x).
double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t m = values.size() / 2;
  return values.size() % 2 == 1 ? values[m] : 0.5 * (values[m - 1] + values[m]);
}

double seconds_of_allreduce(Communicator& comm, std::vector<float>& buffer, std::size_t count, int repeats) {
  const TensorView view(buffer.data(), count, DType::kFloat32);
  comm.allreduce(view, view, ReduceOp::kSum)->wait();
  std::vector<double> samples;
  for (int i = 0; i < repeats; ++i) {
    const auto start = Clock::now();
    comm.allreduce(view, view, ReduceOp::kSum)->wait();
    samples.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  return median(std::move(samples));
}

// A ring allreduce of s bytes over q ranks takes 2(q-1) alpha + 2(q-1)/q s beta.
LinkCost fit(Communicator& comm, std::vector<float>& buffer, std::size_t large_bytes, int repeats) {
  const int q = comm.size();
  const std::size_t large_count = std::max(large_bytes / sizeof(float), kSmall + 1);
  if (buffer.size() < large_count) buffer.assign(large_count, 0.0f);
  const double small = seconds_of_allreduce(comm, buffer, kSmall, repeats);
  const double large = seconds_of_allreduce(comm, buffer, large_count, repeats);
  LinkCost c;
  if (q <= 1) return c;
  c.alpha = small / (2.0 * (q - 1));
  const double bytes = 4.0 * static_cast<double>(large_count - kSmall) * 2.0 * (q - 1) / q;
  c.beta = std::max(large - small, 0.0) / bytes;
  return c;
}

double seconds_per_element(int repeats) {
  constexpr std::size_t n = 1 << 20;
  std::vector<float> in(n, 1.0f), out(n);
  std::vector<double> samples;
  for (int i = 0; i <= repeats; ++i) {
    const auto start = Clock::now();
    kernels::dgc_scaled_copy_f32(in.data(), 0.5f, out.data(), n);
    if (i > 0) samples.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  return median(std::move(samples)) / static_cast<double>(n);
}

}  // namespace

LinkModel measure_links(Communicator& world, Communicator* local, Communicator* cross,
                        const LinkMeasureOptions& options) {
  GRADCOMM_CHECK_ARG((local == nullptr) == (cross == nullptr), "measure_links: give both host communicators or none");
  GRADCOMM_CHECK_ARG(options.repeats >= 1, "measure_links: repeats must be at least 1, got ", options.repeats);
  LinkModel m;
  m.world_size = world.size();
  m.hosts = cross ? cross->size() : world.size();
  m.ranks_per_host = local ? local->size() : 1;
  GRADCOMM_CHECK_ARG(m.hosts * m.ranks_per_host == m.world_size, "measure_links: ", m.hosts, " hosts x ",
                     m.ranks_per_host, " ranks per host is not the world of ", m.world_size);
  std::vector<float> buffer;
  m.world = fit(world, buffer, options.bandwidth_bytes, options.repeats);
  if (local) {
    // Every host at once, as the hierarchical exchange runs.
    m.intra = fit(*local, buffer, options.local_bandwidth_bytes, options.repeats);
    // The R streams of a host sharing its link, as it runs.
    m.inter = fit(*cross, buffer, options.bandwidth_bytes, options.repeats);
  }
  m.seconds_per_element = seconds_per_element(options.repeats);
  // Every rank takes the median over the ranks of each number (all ranks hold the same
  // gathered table, so they compute the same plan); a mean would let one rank's outlier move
  // every prediction.
  constexpr std::size_t kValues = 7;
  const std::vector<float> mine = {static_cast<float>(m.world.alpha), static_cast<float>(m.world.beta),
                                   static_cast<float>(m.intra.alpha), static_cast<float>(m.intra.beta),
                                   static_cast<float>(m.inter.alpha), static_cast<float>(m.inter.beta),
                                   static_cast<float>(m.seconds_per_element)};
  std::vector<float> all(kValues * static_cast<std::size_t>(world.size()));
  world.allgather(TensorView::of(std::span<const float>(mine)), TensorView::of(std::span<float>(all)))->wait();
  auto across_ranks = [&](std::size_t value) {
    std::vector<double> v;
    for (std::size_t r = 0; r < static_cast<std::size_t>(world.size()); ++r) v.push_back(all[r * kValues + value]);
    return median(std::move(v));
  };
  m.world = {across_ranks(0), across_ranks(1)};
  m.intra = {across_ranks(2), across_ranks(3)};
  m.inter = {across_ranks(4), across_ranks(5)};
  m.seconds_per_element = across_ranks(6);
  return m;
}

}  // namespace gradcomm
