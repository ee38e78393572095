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

int run(const Options& options, gradcomm::Communicator& comm, gradcomm::HostCommunicators hosts) {
  const int rank = comm.rank(), p = comm.size();
  Dataset all = load_digits(options.digits.empty() ? default_digits_path() : options.digits);
  Dataset train, test;
  split(all, 0.2, /*seed=*/12345, train, test);  // fixed split: runs compare on the same test set

  std::unique_ptr<Model> model = make_model(options);

  // One global batch is p * batch samples; rank r takes its slice of it.
  const std::size_t global_batch = options.batch * static_cast<std::size_t>(p);
  const std::size_t steps_per_epoch = train.size() / global_batch;
  if (steps_per_epoch == 0) throw std::invalid_argument("batch too large for the training set");
  const std::size_t total_steps = steps_per_epoch * static_cast<std::size_t>(options.epochs);

  CompressorSetup setup = make_compressor(options, p, steps_per_epoch);
  std::unique_ptr<Optimizer> optimizer = make_optimizer(options, setup.compressor_has_momentum, comm, total_steps);

  std::vector<Parameter> params = model->parameters();
  std::vector<gradcomm::LayerSpec> specs;
  for (const Parameter& prm : params) specs.push_back({prm.name, prm.value->size(), prm.ndim, false});

  std::unique_ptr<gradcomm::Exchanger> exchanger;
  if (!optimizer->communicates()) {
    gradcomm::ExchangerOptions xo;
    xo.nonfinite = gradcomm::parse_nonfinite_policy(options.nonfinite);
    xo.exchange = gradcomm::parse_exchange_choice(options.exchange);
    xo.hierarchy = gradcomm::parse_hierarchy(options.hierarchy);
    xo.verbose = !options.quiet;
    exchanger = std::make_unique<gradcomm::Exchanger>(comm, hosts, std::move(setup.compressor), specs, xo);
  }
  // 1-bit Adam runs no Exchanger; its checkpoints carry the unused dense compressor.
  gradcomm::Compressor& compressor = exchanger ? exchanger->compressor() : *setup.compressor;
  TrainerCheckpoints checkpoints(options, comm, exchanger.get(), compressor, params, *optimizer);
  Progress progress = checkpoints.begin(steps_per_epoch);
  const int last_epoch = options.stop_after_epoch > 0 ? std::min(options.stop_after_epoch, options.epochs) : options.epochs;
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
          exchanger->submit(k, view, view);
        }
      });
      std::uint64_t bytes = 0;
      if (exchanger) {
        const auto exchange_start = std::chrono::steady_clock::now();
        bytes = exchanger->finish_step().wire_bytes;
        exchange_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - exchange_start).count();
        if (setup.after_step) setup.after_step(comm, *exchanger, step);
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
  trainer::Options options;
  try {
    if (!trainer::parse_options(argc, argv, options)) return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gradcomm-train: %s\n", e.what());
    return 2;
  }
  try {
    gradcomm::MpiCommunicator comm;  // initializes (and finalizes) MPI
    int status = 0;
    try {
      // The hosts, for a hierarchical exchange (a collective: every rank takes this branch).
      std::unique_ptr<gradcomm::MpiHostCommunicators> hosts;
      if (options.hierarchy != "flat") hosts = std::make_unique<gradcomm::MpiHostCommunicators>(comm, options.ranks_per_host);
      status = trainer::run(options, comm, hosts ? hosts->get() : gradcomm::HostCommunicators{});
    } catch (const gradcomm::Error& e) {
      // Bad --exchange / --hierarchy / --ranks-per-host: raised alike on every rank, before any exchange.
      if (e.code() != gradcomm::ErrorCode::kInvalidArgument) throw;
      if (comm.rank() == 0) std::fprintf(stderr, "gradcomm-train: %s\n", e.message().c_str());
      return 2;
    } catch (const std::invalid_argument& e) {
      // Settings errors are raised identically on every rank, before any exchange.
      if (comm.rank() == 0) std::fprintf(stderr, "gradcomm-train: %s\n", e.what());
      return 2;
    }
    return status;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gradcomm-train: %s\n", e.what());
    return 1;
  }
}
