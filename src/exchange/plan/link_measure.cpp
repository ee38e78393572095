// measure_links: the alpha-beta costs of the links, from a few small allreduces timed at
// setup, averaged over all ranks so that every rank builds the same plan.
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

constexpr std::size_t kSmall = 2;          // floats: the latency
constexpr std::size_t kLarge = 64 * 1024;  // floats (256 KiB): the bandwidth
constexpr int kRepeats = 3;                // the fastest of these (after one untimed)

double seconds_of_allreduce(Communicator& comm, std::vector<float>& buffer, std::size_t count) {
  const TensorView view(buffer.data(), count, DType::kFloat32);
  comm.allreduce(view, view, ReduceOp::kSum)->wait();
  double best = 1e30;
  for (int i = 0; i < kRepeats; ++i) {
    const auto start = Clock::now();
    comm.allreduce(view, view, ReduceOp::kSum)->wait();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - start).count());
  }
  return best;
}

// A ring allreduce of s bytes over q ranks takes 2(q-1) alpha + 2(q-1)/q s beta.
LinkCost fit(Communicator& comm, std::vector<float>& buffer) {
  const int q = comm.size();
  const double small = seconds_of_allreduce(comm, buffer, kSmall);
  const double large = seconds_of_allreduce(comm, buffer, kLarge);
  LinkCost c;
  if (q <= 1) return c;
  c.alpha = small / (2.0 * (q - 1));
  const double bytes = 4.0 * static_cast<double>(kLarge - kSmall) * 2.0 * (q - 1) / q;
  c.beta = std::max(large - small, 0.0) / bytes;
  return c;
}

double seconds_per_element() {
  constexpr std::size_t n = 1 << 20;
  std::vector<float> in(n, 1.0f), out(n);
  double best = 1e30;
  for (int i = 0; i <= kRepeats; ++i) {
    const auto start = Clock::now();
    kernels::dgc_scaled_copy_f32(in.data(), 0.5f, out.data(), n);
    if (i > 0) best = std::min(best, std::chrono::duration<double>(Clock::now() - start).count());
  }
  return best / static_cast<double>(n);
}

}  // namespace

LinkModel measure_links(Communicator& world, Communicator* local, Communicator* cross) {
  GRADCOMM_CHECK_ARG((local == nullptr) == (cross == nullptr), "measure_links: give both host communicators or none");
  LinkModel m;
  m.world_size = world.size();
  m.hosts = cross ? cross->size() : world.size();
  m.ranks_per_host = local ? local->size() : 1;
  GRADCOMM_CHECK_ARG(m.hosts * m.ranks_per_host == m.world_size, "measure_links: ", m.hosts, " hosts x ",
                     m.ranks_per_host, " ranks per host is not the world of ", m.world_size);
  std::vector<float> buffer(kLarge, 0.0f);
  m.world = fit(world, buffer);
  if (local) {
    m.intra = fit(*local, buffer);  // every host at once, as the hierarchical exchange runs
    m.inter = fit(*cross, buffer);  // the R streams of a host sharing its link, as it runs
  }
  m.seconds_per_element = seconds_per_element();
  // Every rank takes the average, so every rank plans alike.
  std::vector<float> values = {static_cast<float>(m.world.alpha), static_cast<float>(m.world.beta),
                               static_cast<float>(m.intra.alpha), static_cast<float>(m.intra.beta),
                               static_cast<float>(m.inter.alpha), static_cast<float>(m.inter.beta),
                               static_cast<float>(m.seconds_per_element)};
  const TensorView view = TensorView::of(std::span<float>(values));
  world.allreduce(view, view, ReduceOp::kSum)->wait();
  const double inv = 1.0 / world.size();
  m.world = {values[0] * inv, values[1] * inv};
  m.intra = {values[2] * inv, values[3] * inv};
  m.inter = {values[4] * inv, values[5] * inv};
  m.seconds_per_element = values[6] * inv;
  return m;
}

}  // namespace gradcomm
