// gradcomm-train: data-parallel training of an MLP or a small CNN (--model) on the digits
// data set. Every MPI rank trains on its shard of each batch and exchanges gradients
// through gradcomm.
#include <gradcomm/gradcomm.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <random>
#include <stdexcept>

#include "checkpoints.h"
#include "digits.h"
#include "launch/device.h"
#include "launch/node.h"
#include "launch/settings.h"
#include "launch/start.h"
#include "model.h"
#include "options.h"
#include "training.h"

namespace trainer {
namespace {

// A hash of this rank's parameters, bit for bit: runs (an uninterrupted one and a resumed
// one) compare by it, and ranks compare it to check that the replicas are identical.
std::uint64_t parameters_fingerprint(const std::vector<Parameter>& params) {
  std::uint64_t h = gradcomm::kFingerprintSeed;
  for (const Parameter& prm : params) h = gradcomm::fingerprint_bytes(prm.value->data(), prm.value->size() * sizeof(float), h);
  return h;
}

float global_mean(gradcomm::Communicator& comm, float local) {
  float value = local;
  gradcomm::TensorView v(&value, 1, gradcomm::DType::kFloat32);
  comm.allreduce(v, v, gradcomm::ReduceOp::kSum)->wait();
  return value / static_cast<float>(comm.size());
}

const std::string kProgram = "gradcomm-train";

// What a rank reads alone, before it talks to any other: its command line and its data.
struct Prepared {
  Options options;
  Dataset data;
  launch::RankDevice device;  // --device: the GPU this rank took
};

void prepare_locally(int argc, char** argv, Prepared& prepared, launch::LocalStart& start) {
  try {
    if (!parse_options(argc, argv, prepared.options)) {
      start.ask_help();
      return;
    }
    const Options& o = prepared.options;
    prepared.data = load_digits(o.digits.empty() ? default_digits_path() : o.digits);
    prepared.device = launch::take_device(o.device);
  } catch (const std::exception& e) {
    start.fail(e.what());
  }
}

// After MPI is up (the node's ranks share its memory), still without a collective that
// could wait for a failed rank: ranks_on_this_node() runs on every rank at the same point.
void check_node(const gradcomm::MpiCommunicator& comm, const Options& o, launch::LocalStart& start) {
  const int ranks_here = launch::ranks_on_this_node(comm);
  if (start.failed() || start.wants_help()) return;
  const std::string shortfall = launch::memory_shortfall(
      estimated_bytes_per_rank(o), ranks_here, launch::available_memory(),
      "--model " + o.model + (o.model == "mlp" ? " --hidden " + hidden_text(o) : "") + " --batch " +
          std::to_string(o.batch));
  if (!shortfall.empty()) start.fail(shortfall + "; lower --hidden or --batch, or run fewer ranks per node");
  if (comm.rank() == 0 && !o.json.empty()) {
    const std::string unwritable = launch::unwritable_output("--json", o.json);
    if (!unwritable.empty()) start.fail(unwritable);
  }
}

// Every setting of run_settings(), and the data every rank read.
std::string agreed_settings(const Options& o, const Dataset& data) {
  launch::SettingsText text;
  for (const Setting& s : run_settings(o)) text.add(s.flag, s.value);
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(fingerprint(data)));
  return text.add("data", std::to_string(data.size()) + "-samples-" + hash).text();
}

// What the agreed settings build, before any collective: whatever fails here fails alike
// on every rank, so it is reported as std::invalid_argument (exit 2 on every rank).
template <typename Build>
auto agreed(Build&& build) {
  try {
    return build();
  } catch (const gradcomm::Error& e) {
    if (e.code() != gradcomm::ErrorCode::kInvalidArgument && e.code() != gradcomm::ErrorCode::kUnsupported) throw;
    throw std::invalid_argument(e.message());
  }
}

// `device_comm`: the communicator of CUDA layers (--device cuda), or null: `comm`.
int run(const Options& options, const Dataset& all, gradcomm::Communicator& comm, gradcomm::HostCommunicators hosts,
        const launch::RankDevice& device, gradcomm::Communicator* device_comm) {
  const int rank = comm.rank(), p = comm.size();
  Dataset train, test;
  split(all, 0.2, /*seed=*/12345, train, test);  // fixed split: runs compare on the same test set

  // One global batch is p * batch samples; rank r takes its slice of it.
  if (options.batch > train.size() / static_cast<std::size_t>(p)) {
    throw std::invalid_argument("--batch " + std::to_string(options.batch) + " on " + std::to_string(p) +
                                " ranks takes more than the " + std::to_string(train.size()) +
                                " training samples per step; use at most --batch " +
                                std::to_string(train.size() / static_cast<std::size_t>(p)));
  }
  const std::size_t global_batch = options.batch * static_cast<std::size_t>(p);
  const std::size_t steps_per_epoch = train.size() / global_batch;
  const std::size_t total_steps = steps_per_epoch * static_cast<std::size_t>(options.epochs);

  std::unique_ptr<Model> model = make_model(options);
  CompressorSetup setup = agreed([&] { return make_compressor(options, steps_per_epoch); });
  std::unique_ptr<Optimizer> optimizer =
      agreed([&] { return make_optimizer(options, setup.compressor_has_momentum, comm, total_steps); });

  std::vector<Parameter> params = model->parameters();
  std::vector<gradcomm::LayerSpec> specs;
  for (const Parameter& prm : params) specs.push_back({prm.name, prm.value->size(), prm.ndim, false});
  // --device cuda: the gradients cross to the GPU before they are submitted and the
  // updates come back after the step.
  std::vector<std::size_t> sizes;
  for (gradcomm::LayerSpec& spec : specs) {
    spec.device = device.device;
    spec.device_index = device.index;
    sizes.push_back(spec.numel);
  }
  launch::DeviceMirror mirror(device, sizes);

  std::unique_ptr<gradcomm::Exchanger> exchanger;
  if (!optimizer->communicates()) {
    gradcomm::ExchangerOptions xo;
    xo.nonfinite = gradcomm::parse_nonfinite_policy(options.nonfinite);
    xo.exchange = gradcomm::parse_exchange_choice(options.exchange);
    xo.hierarchy = gradcomm::parse_hierarchy(options.hierarchy);
    xo.verbose = !options.quiet;
    exchanger = std::make_unique<gradcomm::Exchanger>(device_comm ? *device_comm : comm, hosts,
                                                      std::move(setup.compressor), specs, xo);
  }
  // 1-bit Adam runs no Exchanger; its checkpoints carry the unused dense compressor.
  gradcomm::Compressor& compressor = exchanger ? exchanger->compressor() : *setup.compressor;
  TrainerCheckpoints checkpoints(options, comm, exchanger.get(), compressor, params, *optimizer);
  Progress progress = checkpoints.begin(steps_per_epoch);
  const int last_epoch = options.last_epoch();
  if (rank == 0 && !options.quiet) {
    std::size_t n = 0;
    for (const auto& s : specs) n += s.numel;
    std::printf("gradcomm-train: %d ranks, %zu parameters in %zu tensors, %zu train / %zu test samples, "
                "%zu steps per epoch, model %s, compressor %s, optimizer %s\n",
                p, n, specs.size(), train.size(), test.size(), steps_per_epoch,
                options.model.c_str(), options.compressor.c_str(), options.optimizer.c_str());
    if (options.resume) {
      std::printf("resumed from %s after epoch %d (step %lld)\n", options.checkpoint_dir.c_str(),
                  progress.epochs_done, static_cast<long long>(progress.step));
    }
  }

  std::vector<std::size_t> order(train.size());
  std::vector<float> batch_x(options.batch * Dataset::kFeatures);
  std::vector<int> batch_y(options.batch);
  // Bytes and steps count the whole run, resumed or not; times only this process's steps.
  std::uint64_t& total_bytes = progress.total_bytes;
  std::int64_t& step = progress.step;
  std::int64_t steps_here = 0;
  double total_seconds = 0, exchange_seconds = 0;
  double accuracy = progress.epochs_done >= last_epoch
                        ? model->accuracy(test.features.data(), test.labels.data(), test.size())
                        : 0.0;
  for (int epoch = progress.epochs_done; epoch < last_epoch; ++epoch) {
    if (exchanger) exchanger->compressor().set_epoch(epoch);
    std::iota(order.begin(), order.end(), 0);
    std::mt19937_64 rng(options.seed * 1000003 + static_cast<std::uint64_t>(epoch));
    std::shuffle(order.begin(), order.end(), rng);  // same order on every rank
    float loss_sum = 0;
    for (std::size_t s = 0; s < steps_per_epoch; ++s, ++step, ++steps_here) {
      for (std::size_t b = 0; b < options.batch; ++b) {
        const std::size_t i = order[s * global_batch + static_cast<std::size_t>(rank) * options.batch + b];
        std::copy_n(&train.features[i * Dataset::kFeatures], Dataset::kFeatures, &batch_x[b * Dataset::kFeatures]);
        batch_y[b] = train.labels[i];
      }
      const auto start = std::chrono::steady_clock::now();
      if (exchanger) exchanger->begin_step();
      loss_sum += model->train_batch(batch_x.data(), batch_y.data(), options.batch, [&](std::size_t l) {
        if (!exchanger) return;
        // Submit as backward produces them: the weight and bias of layer l.
        for (std::size_t k : {2 * l + 1, 2 * l}) {
          auto view = gradcomm::TensorView::of(std::span<float>(*params[k].grad));
          if (mirror.active()) {
            mirror.upload(k, params[k].grad->data());
            view = mirror.view(k);
          }
          exchanger->submit(k, view, view);
        }
      });
      std::uint64_t bytes = 0;
      if (exchanger) {
        const auto exchange_start = std::chrono::steady_clock::now();
        bytes = exchanger->finish_step().wire_bytes;
        if (mirror.active()) {
          for (std::size_t k = 0; k < params.size(); ++k) mirror.download(k, params[k].grad->data());
        }
        exchange_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - exchange_start).count();
        if (setup.after_step) setup.after_step(comm, step);
      }
      optimizer->step(params, step);
      if (!exchanger) bytes = optimizer->last_step_wire_bytes();
      total_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      total_bytes += bytes;
    }
    const float loss = global_mean(comm, loss_sum / static_cast<float>(steps_per_epoch));
    accuracy = model->accuracy(test.features.data(), test.labels.data(), test.size());
    if (rank == 0 && !options.quiet) {
      std::printf("epoch %3d  loss %.4f  test accuracy %.2f%%  bytes/step %.0f  time/step %.3f ms\n", epoch + 1,
                  static_cast<double>(loss), 100.0 * accuracy,
                  static_cast<double>(total_bytes) / static_cast<double>(step),
                  1e3 * total_seconds / static_cast<double>(steps_here));
      std::fflush(stdout);
    }
    progress.epochs_done = epoch + 1;
    if (checkpoints.due(progress.epochs_done, last_epoch)) checkpoints.save(progress);
  }
  const std::uint64_t fingerprint = parameters_fingerprint(params);
  const bool identical = gradcomm::same_on_all_ranks(comm, fingerprint);
  const double bytes_per_step = static_cast<double>(total_bytes) / static_cast<double>(std::max<std::int64_t>(step, 1));
  const double per_step_here = 1e3 / static_cast<double>(std::max<std::int64_t>(steps_here, 1));
  const double ms_per_step = total_seconds * per_step_here;
  char fingerprint_hex[17];
  std::snprintf(fingerprint_hex, sizeof fingerprint_hex, "%016llx", static_cast<unsigned long long>(fingerprint));
  if (rank == 0) {
    if (progress.epochs_done < options.epochs) {
      std::printf("stopped after epoch %d of %d; continue with --resume --checkpoint-dir %s\n", progress.epochs_done,
                  options.epochs, options.checkpoint_dir.c_str());
    }
    std::printf("final: test accuracy %.2f%%  bytes/step %.0f  time/step %.3f ms  (exchange wait %.3f ms)  steps %lld  replicas identical: %s  parameters %s\n",
                100.0 * accuracy, bytes_per_step, ms_per_step, exchange_seconds * per_step_here,
                static_cast<long long>(step), identical ? "yes" : "NO", fingerprint_hex);
    if (!options.json.empty()) {
      std::ofstream out(options.json);
      out << "{\"test_accuracy\": " << accuracy << ", \"bytes_per_step\": " << bytes_per_step
          << ", \"time_per_step_ms\": " << ms_per_step << ", \"steps\": " << step
          << ", \"epochs_done\": " << progress.epochs_done
          << ", \"ranks\": " << p << ", \"compressor\": \"" << options.compressor << "\", \"optimizer\": \""
          << options.optimizer << "\", \"replicas_identical\": " << (identical ? "true" : "false")
          << ", \"parameters_fingerprint\": \"" << fingerprint_hex << "\"}\n";
      if (!out) throw std::runtime_error("cannot write " + options.json);
    }
  }
  return identical ? 0 : 3;
}

}  // namespace
}  // namespace trainer

int main(int argc, char** argv) {
  using trainer::kProgram;
  trainer::Prepared prepared;
  launch::LocalStart start;
  trainer::prepare_locally(argc, argv, prepared, start);
  const trainer::Options& options = prepared.options;
  // Initializes (and finalizes) MPI. A rank that failed above still comes here, to tell
  // the others in agree_to_start() instead of leaving them waiting.
  std::unique_ptr<gradcomm::MpiCommunicator> mpi;
  try {
    mpi = std::make_unique<gradcomm::MpiCommunicator>(
        gradcomm::MpiCommunicatorOptions{.collective_timeout = options.timeout});
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", kProgram.c_str(), e.what());
    return 1;
  }
  gradcomm::MpiCommunicator& comm = *mpi;
  try {
    trainer::check_node(comm, options, start);
    launch::Verdict verdict = launch::agree_to_start(comm, start, kProgram);
    if (verdict.go) verdict = launch::agree_on_settings(comm, trainer::agreed_settings(options, prepared.data), kProgram);
    if (!verdict.go) {
      if (verdict.print_usage) std::fputs(trainer::usage().c_str(), stdout);
      if (!verdict.message.empty()) std::fprintf(stderr, "%s\n", verdict.message.c_str());
      return verdict.exit_status;
    }
    // The hosts, for a hierarchical exchange (a collective: every rank agreed on --hierarchy).
    std::unique_ptr<gradcomm::MpiHostCommunicators> hosts;
    if (options.hierarchy != "flat") {
      hosts = std::make_unique<gradcomm::MpiHostCommunicators>(comm, options.ranks_per_host);
    }
    // --device cuda: NCCL's setup is the next collective (or MPI stages device buffers).
    std::string transport;
    std::unique_ptr<gradcomm::Communicator> device_comm =
        launch::device_communicator(comm, prepared.device, options.timeout, transport);
    if (prepared.device.device != gradcomm::Device::kCpu && !options.quiet) {
      std::printf("%s: rank %d exchanges on %s over %s\n", kProgram.c_str(), comm.rank(),
                  prepared.device.description.c_str(), transport.c_str());
      std::fflush(stdout);
    }
    return trainer::run(options, prepared.data, comm, hosts ? hosts->get() : gradcomm::HostCommunicators{},
                        prepared.device, device_comm.get());
  } catch (const std::invalid_argument& e) {
    // From the agreed settings and data alone: the same on every rank, before training.
    if (comm.rank() == 0) std::fprintf(stderr, "%s: %s\n", kProgram.c_str(), e.what());
    return launch::kRefusedToStart;
  } catch (const launch::RaisedOnEveryRank& e) {
    std::fprintf(stderr, "%s: rank %d: %s\n", kProgram.c_str(), comm.rank(), e.what());
    return 1;
  } catch (const gradcomm::Error& e) {
    // The Exchanger raises a non-finite gradient on every rank (its count travels with the
    // payloads). Anything else may be this rank's alone, with the others waiting in a
    // collective (a timeout, a corrupt payload): end the job.
    if (e.code() != gradcomm::ErrorCode::kNonFinite) {
      launch::abort_job(comm, kProgram, e.message() + " [" + gradcomm::error_code_name(e.code()) + "]");
    }
    if (comm.rank() == 0) std::fprintf(stderr, "%s: %s\n", kProgram.c_str(), e.message().c_str());
    return 1;
  } catch (const std::exception& e) {
    launch::abort_job(comm, kProgram, e.what());
  }
}
