#include "gradcomm/exchanger.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

#include "core/state_blob.h"
#include "exchange/engine_driver.h"
#include "exchange/hierarchical_steps.h"
#include "exchange/step_memory.h"
#include "gradcomm/agreement.h"

namespace gradcomm {

namespace {

constexpr char kStateMagic[8] = {'g', 'c', 'X', 'c', 'h', 'g', 's', '1'};

// The host's links are sampled at the size of the largest layer (the hierarchical exchange
// moves whole layers through them), within [4 MiB, 64 MiB] to bound the setup's time; the
// links between hosts carry compressed payloads and keep the default.
LinkMeasureOptions link_sample_sizes(std::span<const LayerSpec> layers) {
  LinkMeasureOptions o;
  std::size_t largest = 0;
  for (const LayerSpec& l : layers) largest = std::max(largest, l.numel * sizeof(float));
  o.local_bandwidth_bytes = std::clamp(largest, o.local_bandwidth_bytes, std::size_t{64} << 20);
  return o;
}

bool planned(const ExchangerOptions& o) {
  return o.exchange != ExchangeChoice::kCompressor || o.hierarchy != Hierarchy::kFlat;
}

}  // namespace

// Each rank's words [fingerprint lo, hi, step lo, hi], gathered from every rank: all ranks
// then hold the same table, so they reach the same verdict, and a mismatch can name every
// rank's step on any device. A gather moves bytes only, so it needs no reduction of
// unsigned words, which not every transport has (torch.distributed has no uint32).
struct Exchanger::LayoutAgreement {
  static constexpr std::size_t kWords = 4;
  detail::HostStaging host;   // this rank's words, then the gathered table
  detail::StepBuffer device;  // device layers: the collective's buffers, laid out alike
  WorkHandle work;
  std::size_t ranks = 0;
  std::uint32_t* words() const { return reinterpret_cast<std::uint32_t*>(host.at(0)); }
  const std::uint32_t* table() const { return words() + kWords; }
  std::size_t bytes() const { return (1 + ranks) * kWords * sizeof(std::uint32_t); }
  std::uint64_t fingerprint_of(std::size_t rank) const {
    return (std::uint64_t{table()[rank * kWords + 1]} << 32) | table()[rank * kWords];
  }
  std::int64_t step_of(std::size_t rank) const {
    return static_cast<std::int64_t>((std::uint64_t{table()[rank * kWords + 3]} << 32) | table()[rank * kWords + 2]);
  }
};

Exchanger::Exchanger(Communicator& comm, std::shared_ptr<Compressor> compressor, std::vector<LayerSpec> layers,
                     ExchangerOptions options)
    : Exchanger(comm, HostCommunicators{}, std::move(compressor), std::move(layers), options) {}

Exchanger::Exchanger(Communicator& comm, HostCommunicators hosts, std::shared_ptr<Compressor> compressor,
                     std::vector<LayerSpec> layers, ExchangerOptions options)
    : comm_(comm), layers_(std::move(layers)) {
  GRADCOMM_CHECK_ARG(compressor != nullptr, "Exchanger: no compressor given");
  const Device device = layers_.empty() ? Device::kCpu : layers_.front().device;
  GRADCOMM_CHECK_ARG(comm_.accepts(device), "Exchanger: the layers are on ", device_name(device), " but ",
                     comm_.describe(), " takes ", device_name(comm_.device()),
                     " buffers (CUDA layers need a communicator that takes device buffers: "
                     "NcclCommunicator, ThreadCommunicator on a device, or MpiCommunicator built with CUDA)");
  GRADCOMM_CHECK(device == Device::kCpu || !planned(options), ErrorCode::kUnsupported, "Exchanger on rank ",
                 comm_.rank(), ": ExchangerOptions exchange '", exchange_choice_name(options.exchange),
                 "' and hierarchy '", hierarchy_name(options.hierarchy),
                 "' run on host layers only; CUDA layers take exchange 'compressor' and hierarchy 'flat'");
  GRADCOMM_CHECK_ARG(options.hierarchy != Hierarchy::kHierarchical || hosts.given(), "Exchanger on rank ",
                     comm_.rank(), ": a hierarchical exchange needs the host communicators (local and cross)");
  if (hosts.given()) {
    GRADCOMM_CHECK_ARG(hosts.local->size() * hosts.cross->size() == comm_.size(), "Exchanger on rank ", comm_.rank(),
                       ": ", hosts.cross->size(), " hosts x ", hosts.local->size(), " ranks per host is not the world of ",
                       comm_.size());
  }
  if (planned(options)) {
    // Ranks must agree on the layers before timing collectives and planning with them.
    check_agreement(comm_, layers_,
                    compressor->settings_fingerprint() + " exchange=" + exchange_choice_name(options.exchange) +
                        " hierarchy=" + hierarchy_name(options.hierarchy),
                    "Exchanger setup (" + compressor->name() + ")");
    const bool can_be_hierarchical = hosts.given() && hosts.local->size() > 1 && hosts.cross->size() > 1;
    const LinkModel links = measure_links(comm_, hosts.given() ? hosts.local : nullptr,
                                          hosts.given() ? hosts.cross : nullptr, link_sample_sizes(layers_));
    const ExchangeChoice choice =
        options.exchange == ExchangeChoice::kCompressor ? ExchangeChoice::kAuto : options.exchange;
    plan_ = plan_exchange(links, layer_costs(*compressor, layers_), choice, options.hierarchy,
                          can_be_hierarchical || options.hierarchy == Hierarchy::kHierarchical,
                          options.region_refresh_steps);
    if (options.exchange == ExchangeChoice::kCompressor) plan_.exchange.clear();  // only the topology was asked for
  }
  if (plan_.hierarchical) {
    hier_ = std::make_unique<detail::HierarchicalSteps>(*hosts.local, layers_, options.bucket_bytes);
    engine_ = std::make_unique<StepEngine>(std::move(compressor), hier_->shard_layers(), hosts.cross->size(),
                                           hosts.cross->rank(), options);
    driver_ = std::make_unique<detail::EngineDriver>(*engine_, *hosts.cross);
  } else {
    engine_ = std::make_unique<StepEngine>(std::move(compressor), layers_, comm_.size(), comm_.rank(), options);
    driver_ = std::make_unique<detail::EngineDriver>(*engine_, comm_);
  }
  check_agreement(driver_->comm(), engine_->layers(), engine_->settings_fingerprint(),
                  "Exchanger setup (" + engine_->compressor().name() + ")");
  if (options.agree_every_step) {
    agreement_ = std::make_unique<LayoutAgreement>();
    agreement_->ranks = static_cast<std::size_t>(driver_->comm().size());
    agreement_->host = detail::HostStaging(engine_->device(), agreement_->bytes());
    if (engine_->device() != Device::kCpu) {
      agreement_->device = detail::StepBuffer(engine_->device(), engine_->device_index(), agreement_->bytes());
    }
    driver_->set_before_first_collective([this] { check_layout_agreement(); });
  }
  apply_plan();
  if (options.verbose && planned(options) && comm_.rank() == 0) {
    std::fprintf(stderr, "gradcomm: %s", plan_.describe().c_str());
    std::fflush(stderr);
  }
}

Exchanger::~Exchanger() = default;

void Exchanger::apply_plan() {
  for (std::size_t layer = 0; layer < plan_.exchange.size(); ++layer) {
    engine_->compressor().set_layer_exchange(layer, plan_.exchange[layer]);
  }
}

void Exchanger::restore_step(std::int64_t step) {
  GRADCOMM_CHECK(!engine_->in_step(), ErrorCode::kInvalidArgument, "Exchanger::restore_step(", step, ") on rank ",
                 comm_.rank(), " inside step ", step_, ": finish the step first");
  GRADCOMM_CHECK_ARG(step >= 0, "Exchanger::restore_step: step ", step, " < 0");
  step_ = step;
}

void Exchanger::begin_step() {
  engine_->begin_step(step_);
  driver_->begin_step();
  if (hier_) hier_->begin_step();
  if (agreement_) start_layout_agreement();
}

// Over the engine's communicator: a hierarchical exchange's engines match across hosts,
// not inside one (each local rank exchanges other shards).
void Exchanger::start_layout_agreement() {
  LayoutAgreement& a = *agreement_;
  const std::uint64_t mine = engine_->layout_fingerprint();
  const auto step = static_cast<std::uint64_t>(step_);
  std::uint32_t* w = a.words();
  w[0] = static_cast<std::uint32_t>(mine);
  w[1] = static_cast<std::uint32_t>(mine >> 32);
  w[2] = static_cast<std::uint32_t>(step);
  w[3] = static_cast<std::uint32_t>(step >> 32);
  std::uint32_t* send = w;
  if (engine_->device() != Device::kCpu) {
    const detail::StepMover mover{engine_->device(), engine_->stream()};
    mover.copy(a.device.at(0), w, LayoutAgreement::kWords * sizeof(std::uint32_t));
    driver_->comm().follow_stream(engine_->stream());
    send = reinterpret_cast<std::uint32_t*>(a.device.at(0));
  }
  const Device device = engine_->device();
  const int index = engine_->device_index();
  a.work = driver_->comm().allgather(TensorView(send, LayoutAgreement::kWords, DType::kUInt32, device, index),
                                     TensorView(send + LayoutAgreement::kWords, a.ranks * LayoutAgreement::kWords,
                                                DType::kUInt32, device, index));
}

void Exchanger::check_layout_agreement() {
  LayoutAgreement& a = *agreement_;
  if (!a.work) return;
  a.work->wait_stream(engine_->stream());
  a.work.reset();
  if (engine_->device() != Device::kCpu) {
    const detail::StepMover mover{engine_->device(), engine_->stream()};
    mover.copy(a.words(), a.device.at(0), a.bytes());
    mover.synchronize();
  }
  std::string differing;
  for (std::size_t r = 1; r < a.ranks; ++r) {
    if (a.fingerprint_of(r) != a.fingerprint_of(0)) differing += (differing.empty() ? "" : ", ") + std::to_string(r);
  }
  if (differing.empty()) return;
  if (hier_) hier_->abandon();
  engine_->abandon_step();
  std::string steps;
  for (std::size_t r = 0; r < a.ranks; ++r) steps += (r ? ", " : "") + std::to_string(a.step_of(r));
  GRADCOMM_THROW(ErrorCode::kSizeMismatch, "Exchanger on rank ", comm_.rank(), ": the ranks laid step ", step_,
                 " out differently: their schedules disagree (set_epoch, load_state_dict or "
                 "the step counter moved on some ranks only; every rank must advance them alike); "
                 "the ranks are at steps [",
                 steps, "], and ranks [", differing, "] laid their step out unlike rank 0");
}

void Exchanger::set_stream(void* cuda_stream) { engine_->set_stream(cuda_stream); }

void Exchanger::submit(std::size_t layer, TensorView grad, TensorView out) {
  if (hier_) {
    try {
      hier_->submit(layer, grad, out);
      hier_->forward(*driver_, false);
    } catch (...) {
      hier_->abandon();
      engine_->abandon_step();
      throw;
    }
  } else {
    engine_->submit(layer, grad, out);
    driver_->issue_ready();
  }
  // Keep the collectives in flight moving while the caller computes the next gradient.
  driver_->poke();
}

const StepStats& Exchanger::finish_step() {
  if (!hier_) {
    engine_->check_all_submitted();
    driver_->issue_ready();
    driver_->complete_all();
    step_ += 1;
    return engine_->finish_step();
  }
  try {
    hier_->check_all_submitted();
    hier_->forward(*driver_, true);
    driver_->issue_ready();
    driver_->complete_all();
    stats_ = engine_->finish_step();
    hier_->gather();
  } catch (...) {
    hier_->abandon();
    engine_->abandon_step();
    throw;
  }
  stats_.wire_bytes += hier_->wire_bytes();
  stats_.local_wire_bytes = hier_->wire_bytes();
  stats_.collectives += hier_->collectives();
  step_ += 1;
  return stats_;
}

const StepStats& Exchanger::exchange(std::span<const TensorView> grads, std::span<const TensorView> outs) {
  const std::size_t n = layers_.size();
  GRADCOMM_CHECK(grads.size() == n && outs.size() == n, ErrorCode::kSizeMismatch, "Exchanger::exchange: ",
                 grads.size(), " gradients and ", outs.size(), " outputs for ", n, " layers");
  begin_step();
  for (std::size_t pos = 0; pos < n; ++pos) {
    const std::size_t layer = n - 1 - pos;
    submit(layer, grads[layer], outs[layer]);
  }
  return finish_step();
}

std::vector<std::byte> Exchanger::save_exchange_state() const {
  std::vector<std::byte> blob;
  detail::StateBlobWriter w(blob);
  w.bytes(kStateMagic, sizeof kStateMagic);
  const std::vector<std::byte> plan = plan_.save();
  const std::vector<std::byte> regions = engine_->save_sparse_regions();
  w.value<std::uint64_t>(plan.size());
  w.bytes(plan.data(), plan.size());
  w.value<std::uint64_t>(regions.size());
  w.bytes(regions.data(), regions.size());
  return blob;
}

void Exchanger::load_exchange_state(std::span<const std::byte> blob) {
  GRADCOMM_CHECK(!engine_->in_step(), ErrorCode::kInvalidArgument, "Exchanger::load_exchange_state on rank ",
                 comm_.rank(), " inside step ", step_, ": finish the step first");
  detail::StateBlobReader r(blob, "Exchanger::load_exchange_state on rank " + std::to_string(comm_.rank()));
  char magic[sizeof kStateMagic];
  r.bytes(magic, sizeof magic, "the magic");
  GRADCOMM_CHECK(std::memcmp(magic, kStateMagic, sizeof kStateMagic) == 0, ErrorCode::kCorruptPayload,
                 "Exchanger::load_exchange_state on rank ", comm_.rank(), ": not an exchange state");
  const std::uint64_t plan_bytes = r.value<std::uint64_t>("the plan size");
  ExchangePlan plan = ExchangePlan::load(r.view(plan_bytes, "the plan"));
  const std::uint64_t region_bytes = r.value<std::uint64_t>("the regions size");
  const std::span<const std::byte> regions = r.view(region_bytes, "the regions");
  r.finish();
  GRADCOMM_CHECK(plan.hierarchical == hierarchical(), ErrorCode::kInvalidArgument, "Exchanger::load_exchange_state on rank ",
                 comm_.rank(), ": the state was saved by a ", plan.hierarchical ? "hierarchical" : "flat",
                 " exchange, this one is ", hierarchical() ? "hierarchical" : "flat",
                 "; construct the Exchanger with ExchangerOptions::hierarchy as saved");
  GRADCOMM_CHECK(plan.exchange.empty() || plan.exchange.size() == layers_.size(), ErrorCode::kInvalidArgument,
                 "Exchanger::load_exchange_state on rank ", comm_.rank(), ": a plan of ", plan.exchange.size(),
                 " layers for ", layers_.size());
  engine_->load_sparse_regions(regions);
  plan_ = std::move(plan);
  apply_plan();
}

}  // namespace gradcomm
