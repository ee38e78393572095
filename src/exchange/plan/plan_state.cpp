// ExchangePlan: the table printed with `verbose`, and the blob saved with a checkpoint.
#include <cstdio>
#include <cstring>
#include <string>

#include "core/state_blob.h"
#include "gradcomm/error.h"
#include "gradcomm/exchange_plan.h"

namespace gradcomm {

namespace {

constexpr char kPlanMagic[8] = {'g', 'c', 'P', 'l', 'a', 'n', '0', '1'};

std::string format(const char* fmt, auto... args) {
  char line[256];
  std::snprintf(line, sizeof line, fmt, args...);
  return line;
}

std::string link_text(const char* what, const LinkCost& c) {
  const double mb_per_s = c.beta > 0 ? 1e-6 / c.beta : 0.0;
  return format("%s alpha %.1f us, beta %.3f ns/B (%.0f MB/s)", what, c.alpha * 1e6, c.beta * 1e9, mb_per_s);
}

void write_link(detail::StateBlobWriter& w, const LinkCost& c) {
  w.value<double>(c.alpha);
  w.value<double>(c.beta);
}

LinkCost read_link(detail::StateBlobReader& r) {
  LinkCost c;
  c.alpha = r.value<double>("a latency");
  c.beta = r.value<double>("a byte time");
  return c;
}

}  // namespace

std::string ExchangePlan::describe() const {
  std::string out = format("exchange plan (%s, %s): predicted %.3f ms per step (flat %.3f ms", exchange_choice_name(choice),
                           hierarchical ? "hierarchical" : "flat", predicted_seconds * 1e3, flat_total * 1e3);
  out += links.hosts > 1 && links.ranks_per_host > 1 ? format(", hierarchical %.3f ms)\n", hierarchical_total * 1e3)
                                                     : std::string(")\n");
  out += format("  %d ranks = %d host(s) x %d; ", links.world_size, links.hosts, links.ranks_per_host);
  out += link_text("world", links.world);
  if (links.ranks_per_host > 1) out += "; " + link_text("intra", links.intra);
  if (links.hosts > 1 && links.ranks_per_host > 1) out += "; " + link_text("inter", links.inter);
  out += format("; compute %.3f ns/element\n", links.seconds_per_element * 1e9);
  out += format("  %-32s %12s %14s %18s  %s\n", "layer", "dense ms", "allgather ms", "reduce_scatter ms", "chosen");
  const auto& seconds = hierarchical ? hierarchical_seconds : flat_seconds;
  for (std::size_t l = 0; l < exchange.size(); ++l) {
    auto ms = [&](std::size_t i) {
      return seconds[l][i] > 0 || i == 0 ? format("%.3f", seconds[l][i] * 1e3) : std::string("-");
    };
    out += format("  %-32s %12s %14s %18s  %s\n", l < names.size() ? names[l].c_str() : "?", ms(0).c_str(),
                  ms(1).c_str(), ms(2).c_str(), sparse_exchange_name(exchange[l]));
  }
  return out;
}

std::vector<std::byte> ExchangePlan::save() const {
  std::vector<std::byte> blob;
  detail::StateBlobWriter w(blob);
  w.bytes(kPlanMagic, sizeof kPlanMagic);
  w.value<std::uint8_t>(hierarchical ? 1 : 0);
  w.value<std::uint8_t>(static_cast<std::uint8_t>(choice));
  write_link(w, links.world);
  write_link(w, links.intra);
  write_link(w, links.inter);
  w.value<double>(links.seconds_per_element);
  w.value<std::int32_t>(links.world_size);
  w.value<std::int32_t>(links.hosts);
  w.value<std::int32_t>(links.ranks_per_host);
  w.value<double>(predicted_seconds);
  w.value<double>(flat_total);
  w.value<double>(hierarchical_total);
  w.value<std::uint64_t>(exchange.size());
  for (std::size_t l = 0; l < exchange.size(); ++l) {
    w.value<std::uint8_t>(static_cast<std::uint8_t>(exchange[l]));
    for (double s : flat_seconds[l]) w.value<double>(s);
    for (double s : hierarchical_seconds[l]) w.value<double>(s);
    const std::string& name = names[l];
    w.value<std::uint32_t>(static_cast<std::uint32_t>(name.size()));
    w.bytes(name.data(), name.size());
  }
  return blob;
}

ExchangePlan ExchangePlan::load(std::span<const std::byte> blob) {
  detail::StateBlobReader r(blob, "ExchangePlan::load");
  char magic[sizeof kPlanMagic];
  r.bytes(magic, sizeof magic, "the magic");
  GRADCOMM_CHECK(std::memcmp(magic, kPlanMagic, sizeof kPlanMagic) == 0, ErrorCode::kCorruptPayload,
                 "ExchangePlan::load: not an exchange plan");
  ExchangePlan plan;
  plan.hierarchical = r.value<std::uint8_t>("the topology") != 0;
  const auto choice = r.value<std::uint8_t>("the choice");
  GRADCOMM_CHECK(choice <= static_cast<std::uint8_t>(ExchangeChoice::kReduceScatter), ErrorCode::kCorruptPayload,
                 "ExchangePlan::load: choice ", int{choice});
  plan.choice = static_cast<ExchangeChoice>(choice);
  plan.links.world = read_link(r);
  plan.links.intra = read_link(r);
  plan.links.inter = read_link(r);
  plan.links.seconds_per_element = r.value<double>("the compute time");
  plan.links.world_size = r.value<std::int32_t>("the world size");
  plan.links.hosts = r.value<std::int32_t>("the hosts");
  plan.links.ranks_per_host = r.value<std::int32_t>("the ranks per host");
  plan.predicted_seconds = r.value<double>("the prediction");
  plan.flat_total = r.value<double>("the flat total");
  plan.hierarchical_total = r.value<double>("the hierarchical total");
  const auto n = r.value<std::uint64_t>("the layer count");
  GRADCOMM_CHECK(n <= r.left(), ErrorCode::kCorruptPayload, "ExchangePlan::load: ", n, " layers in ", r.left(),
                 " bytes");
  for (std::uint64_t l = 0; l < n; ++l) {
    const auto e = r.value<std::uint8_t>("an exchange");
    GRADCOMM_CHECK(e <= static_cast<std::uint8_t>(SparseExchange::kDense), ErrorCode::kCorruptPayload,
                   "ExchangePlan::load: layer ", l, " has exchange ", int{e});
    plan.exchange.push_back(static_cast<SparseExchange>(e));
    std::array<double, kExchangeOptions> flat{}, hier{};
    for (double& s : flat) s = r.value<double>("a prediction");
    for (double& s : hier) s = r.value<double>("a prediction");
    plan.flat_seconds.push_back(flat);
    plan.hierarchical_seconds.push_back(hier);
    const auto length = r.value<std::uint32_t>("a name length");
    const auto bytes = r.view(length, "a name");
    plan.names.emplace_back(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
  r.finish();
  return plan;
}

}  // namespace gradcomm
