// gradcomm-bench: nccl-tests-style benchmark of gradient exchange through gradcomm.
//
//   mpirun -np 4 gradcomm-bench -b 8 -e 128M -f 2 -n 20 -w 5 -c 1 --compressor none
//   mpirun -np 4 gradcomm-bench --model resnet50 --compressor none
//
// Each row exchanges one buffer (a sweep) or one model's layers (--model) per iteration.
// Columns follow nccl-tests (GB = 1e9; busbw = algbw * 2(p-1)/p for allreduce, (p-1)/p
// for allgather) plus wire_bytes, the bytes each rank handed to the transport per step
// (Communicator::traffic(), max over ranks). algbw is always the dense fp32 size over the
// time, so a compressor's gain shows as a higher algbw than "none" at the same size.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "gradcomm/gradcomm.h"
#include "gradcomm_bench/bench_data.h"
#include "gradcomm_bench/bench_options.h"
#include "gradcomm_bench/models.h"
#include "gradcomm_bench/runner.h"
#include "launch/device.h"
#include "launch/node.h"
#include "launch/start.h"

#ifndef GRADCOMM_BENCH_MODELS_DIR
#define GRADCOMM_BENCH_MODELS_DIR ""
#endif

namespace gradcomm::bench {
namespace {

struct Row {
  std::size_t bytes = 0;  // dense fp32 size of the exchanged gradients
  std::size_t count = 0;
  Collective collective = Collective::kAllreduce;
  double time_us = 0;
  double algbw_gbps = 0;
  double busbw_gbps = 0;
  std::uint64_t wire_bytes = 0;
  std::uint64_t local_wire_bytes = 0;  // of wire_bytes, inside the host (hierarchical)
  double predicted_us = 0;             // the Exchanger's plan (0: nothing planned)
  std::string plan;                    // what it chose (empty: nothing planned)
  long long wrong = -1;  // -1: not checked
  PayloadSplit split;
};

void check_mpi(int rc, const char* what, int rank) {
  GRADCOMM_CHECK(rc == MPI_SUCCESS, ErrorCode::kCommunication, "gradcomm-bench: ", what, " failed on rank ", rank,
                 " (MPI error ", rc, ")");
}

double bus_factor(Collective collective, int p) {
  if (p <= 1) return 0;
  return collective == Collective::kAllreduce ? 2.0 * (p - 1) / p : static_cast<double>(p - 1) / p;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) out += c;
  }
  return out + "\"";
}

class Bench {
 public:
  // `exchange_comm`: what the runners exchange over (NCCL for --device cuda; else `comm`).
  Bench(MpiCommunicator& comm, Communicator& exchange_comm, launch::RankDevice device, BenchOptions options,
        std::optional<ModelTable> model)
      : comm_(comm), xcomm_(exchange_comm), device_(std::move(device)), o_(std::move(options)),
        model_(std::move(model)) {}

  // Runs every row and prints them on rank 0; returns the number of wrong elements.
  long long run() {
    const RunnerEntry& entry = find_runner(o_.compressor);
    std::vector<Row> rows;
    header(entry);
    if (model_) {
      const ModelTable& model = *model_;
      print0("# model %s (%s): %zu tensors, %zu parameters, %zu in 1-D tensors\n", model.name.c_str(),
             model.source.c_str(), model.layers.size(), model.params, model.params_1d);
      column_titles();
      rows.push_back(measure(entry, model.layers, model.params));
      print_row(rows.back());
      print_note();
      const std::uint64_t dense_wire = allreduce_wire_bytes(4ull * model.params, comm_.size());
      print0("#\n# %s with %s: %llu bytes per rank per step; a dense fp32 ring allreduce sends %llu (%.1fx)\n",
             model.name.c_str(), o_.compressor.c_str(), static_cast<unsigned long long>(rows.back().wire_bytes),
             static_cast<unsigned long long>(dense_wire),
             rows.back().wire_bytes ? static_cast<double>(dense_wire) / static_cast<double>(rows.back().wire_bytes) : 0.0);
      const PayloadSplit& split = rows.back().split;
      if (split.sparse_allreduce > 0) {
        print0("# payload per rank per step: %llu B of slot lists through the sparse allreduce (about %llu B sent"
               " to their owners and back as kept sums), %llu B allgathered, %llu B allreduced\n",
               static_cast<unsigned long long>(split.sparse_allreduce),
               static_cast<unsigned long long>(2 * split.sparse_allreduce),
               static_cast<unsigned long long>(split.allgather), static_cast<unsigned long long>(split.allreduce));
      } else if (split.allreduce + split.allgather > 0) {
        print0("# payload per rank per step: %llu B allgathered (sparse) + %llu B allreduced (dense) = %llu B;"
               " by the algorithm model (no framing) that sends %llu + %llu B\n",
               static_cast<unsigned long long>(split.allgather), static_cast<unsigned long long>(split.allreduce),
               static_cast<unsigned long long>(split.allgather + split.allreduce),
               static_cast<unsigned long long>(allgather_wire_bytes(split.allgather, comm_.size())),
               static_cast<unsigned long long>(allreduce_wire_bytes(split.allreduce, comm_.size())));
      }
    } else {
      column_titles();
      for (const std::size_t bytes : sweep_sizes(o_)) {
        const std::vector<LayerSpec> layers{LayerSpec{"sweep", bytes / 4, 2, false}};
        rows.push_back(measure(entry, layers, bytes / 4));
        print_row(rows.back());
        print_note();
      }
    }
    return footer(rows);
  }

 private:
  template <typename... Args>
  void print0(const char* format, Args... args) const {
    if (comm_.rank() != 0) return;
    std::printf(format, args...);
    std::fflush(stdout);
  }

  void header(const RunnerEntry& entry) {
    print0("# gradcomm-bench %s: compressor %s (%s)\n", version(), entry.name, entry.summary);
    if (o_.runner.exchange != ExchangeChoice::kCompressor || o_.runner.hierarchy != Hierarchy::kFlat) {
      print0("# exchange %s, hierarchy %s", exchange_choice_name(o_.runner.exchange), hierarchy_name(o_.runner.hierarchy));
      if (o_.runner.hosts.given()) {
        print0(" (%d hosts x %d ranks)", o_.runner.hosts.cross->size(), o_.runner.hosts.local->size());
      }
      print0("\n");
    }
    print0("# %d ranks, %s; link: %s\n", comm_.size(), xcomm_.describe().c_str(), o_.link.c_str());
    if (device_.device != Device::kCpu) print0("# gradients on %s (rank 0)\n", device_.description.c_str());
    if (o_.model.empty()) {
      print0("# minBytes %zu maxBytes %zu step: %s\n", o_.min_bytes, o_.max_bytes,
             (o_.step_factor > 0 ? std::to_string(o_.step_factor) + "(factor)" : std::to_string(o_.step_bytes) + "(bytes)").c_str());
    }
    print0("# warmup iters: %d iters: %d validation: %d; time: %s of the mean over iters\n", o_.warmup, o_.iters,
           o_.check ? 1 : 0, time_across_ranks_name(o_.time_across_ranks));
  }

  void column_titles() {
    print0("#\n# %10s %13s %7s %10s %12s %8s %8s %8s %14s\n", "size", "count", "type", "collective", "time", "algbw",
           "busbw", "#wrong", "wire_bytes");
    print0("# %10s %13s %7s %10s %12s %8s %8s %8s %14s\n", "(B)", "(elements)", "", "", "(us)", "(GB/s)", "(GB/s)", "",
           "(B/rank)");
  }

  void print_row(const Row& r) {
    const std::string wrong = r.wrong < 0 ? "N/A" : std::to_string(r.wrong);
    print0("  %10zu %13zu %7s %10s %12.1f %8.3f %8.3f %8s %14llu\n", r.bytes, r.count, "float",
           collective_name(r.collective), r.time_us, r.algbw_gbps, r.busbw_gbps, wrong.c_str(),
           static_cast<unsigned long long>(r.wire_bytes));
    if (r.predicted_us > 0 || r.local_wire_bytes > 0) {
      print0("#   plan %s, predicted %.1f us; %llu of the wire bytes inside the host\n", r.plan.c_str(), r.predicted_us,
             static_cast<unsigned long long>(r.local_wire_bytes));
    }
  }

  void print_note() {
    if (!note_.empty()) print0("#   %s\n", note_.c_str());
  }

  long long footer(const std::vector<Row>& rows) {
    long long wrong = 0;
    double busbw = 0;
    for (const Row& r : rows) {
      wrong += std::max(r.wrong, 0LL);
      busbw += r.busbw_gbps;
    }
    if (o_.check) print0("# Out of bounds values : %lld %s\n", wrong, wrong ? "FAILED" : "OK");
    print0("# Avg bus bandwidth    : %g GB/s\n#\n", rows.empty() ? 0.0 : busbw / static_cast<double>(rows.size()));
    if (!o_.json_path.empty() && comm_.rank() == 0) write_json(rows);
    return wrong;
  }

  void write_json(const std::vector<Row>& rows) const {
    std::ofstream out(o_.json_path);
    GRADCOMM_CHECK_ARG(out.good(), "cannot write --json ", o_.json_path);
    out << "[\n";
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      char numbers[512];
      std::snprintf(numbers, sizeof numbers,
                    "\"size_bytes\": %zu, \"count\": %zu, \"time_us\": %.3f, \"algbw_gbps\": %.6f, "
                    "\"busbw_gbps\": %.6f, \"wire_bytes_per_rank\": %llu, \"local_wire_bytes_per_rank\": %llu, "
                    "\"predicted_us\": %.3f, ",
                    r.bytes, r.count, r.time_us, r.algbw_gbps, r.busbw_gbps,
                    static_cast<unsigned long long>(r.wire_bytes), static_cast<unsigned long long>(r.local_wire_bytes),
                    r.predicted_us);
      out << "  {\"compressor\": " << json_string(o_.compressor) << ", " << numbers
          << "\"wrong\": " << (r.wrong < 0 ? std::string("null") : std::to_string(r.wrong))
          << ", \"collective\": \"" << collective_name(r.collective) << "\", \"ranks\": " << comm_.size()
          << ", \"model\": " << (o_.model.empty() ? std::string("null") : json_string(o_.model))
          << ", \"link\": " << json_string(o_.link) << ", \"iters\": " << o_.iters
          << ", \"plan\": " << json_string(r.plan) << ", \"model_slice\": "
          << (o_.slice_first || o_.slice_end
                  ? json_string(std::to_string(o_.slice_first) + ":" + std::to_string(o_.slice_end))
                  : std::string("null"))
          << ", \"exchange\": " << json_string(exchange_choice_name(o_.runner.exchange))
          << ", \"hierarchy\": " << json_string(hierarchy_name(o_.runner.hierarchy))
          << ", \"time_across_ranks\": " << json_string(time_across_ranks_name(o_.time_across_ranks)) << "}"
          << (i + 1 < rows.size() ? "," : "") << "\n";
    }
    out << "]\n";
    GRADCOMM_CHECK(out.good(), ErrorCode::kIo, "writing ", o_.json_path, " failed");
  }

  // Grows the flat buffers (never shrinks: a sweep's rows reuse them) and fills the
  // gradient; the generator is index-based, so a longer fill keeps the shorter prefix.
  void prepare(std::size_t count) {
    if (grad_.size() >= count) return;
    grad_.resize(count);
    out_.resize(count);
    fill_gradient(o_.seed, comm_.rank(), grad_);
  }

  Row measure(const RunnerEntry& entry, std::vector<LayerSpec> layers, std::size_t count) {
    prepare(count);
    // --device cuda: the row's gradient and output live on the GPU (the gradient copied
    // there once); the -c check reads the output back.
    const std::size_t sizes[2] = {count, count};
    launch::DeviceMirror mirror(device_, sizes);
    if (mirror.active()) mirror.upload(0, grad_.data());
    const auto base = [&](std::size_t which) {
      std::vector<float>& host = which == 0 ? grad_ : out_;
      return mirror.active() ? static_cast<float*>(mirror.view(which).data()) : host.data();
    };
    std::vector<TensorView> grads, outs, host_outs;
    std::size_t offset = 0;
    for (LayerSpec& layer : layers) {
      layer.device = device_.device;
      layer.device_index = device_.index;
      grads.emplace_back(base(0) + offset, layer.numel, DType::kFloat32, device_.device, device_.index);
      outs.emplace_back(base(1) + offset, layer.numel, DType::kFloat32, device_.device, device_.index);
      host_outs.emplace_back(out_.data() + offset, layer.numel, DType::kFloat32);
      offset += layer.numel;
    }
    std::unique_ptr<Runner> runner = entry.make(xcomm_, layers, o_.runner);
    if (o_.check && !bound_printed_) {
      print0("#   -c bound: %s\n", runner->bound().statement.c_str());
      bound_printed_ = true;
    }
    Row row;
    row.bytes = 4 * count;
    row.count = count;
    row.collective = runner->collective();
    row.split = runner->payload_split();
    if (o_.check) {
      // The first step of a fresh runner: error-feedback state is still zero, so the
      // compressor's bound applies to this one step exactly.
      runner->step(grads, outs);
      if (mirror.active()) mirror.download(1, out_.data());
      const std::uint64_t local = runner->count_wrong(host_outs, DenseReference(o_.seed, comm_.size())) +
                                  differs_from_rank0(count);
      row.wrong = static_cast<long long>(reduce_u64(local, MPI_SUM));
    }
    for (int i = 0; i < o_.warmup; ++i) runner->step(grads, outs);
    comm_.barrier()->wait();
    const auto bytes_sent = [&] { return xcomm_.traffic().bytes_sent + runner->bytes_sent_outside_communicator(); };
    const std::uint64_t sent_before = bytes_sent(), local_before = runner->bytes_sent_inside_host();
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < o_.iters; ++i) runner->step(grads, outs);
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    const double seconds = across_ranks(elapsed.count() / o_.iters);
    row.time_us = seconds * 1e6;
    row.algbw_gbps = seconds > 0 ? static_cast<double>(row.bytes) / seconds / 1e9 : 0;
    row.busbw_gbps = row.algbw_gbps * bus_factor(row.collective, comm_.size());
    row.wire_bytes = reduce_u64((bytes_sent() - sent_before) / static_cast<std::uint64_t>(o_.iters), MPI_MAX);
    row.local_wire_bytes =
        reduce_u64((runner->bytes_sent_inside_host() - local_before) / static_cast<std::uint64_t>(o_.iters), MPI_MAX);
    row.predicted_us = runner->predicted_seconds() * 1e6;
    row.plan = runner->plan_summary();
    note_ = runner->note();
    return row;
  }

  // Every rank must end a step with bitwise the same result: count the elements of this
  // rank's output that differ from rank 0's, fetched in fixed-size chunks.
  std::uint64_t differs_from_rank0(std::size_t count) {
    constexpr std::size_t kChunk = 1u << 20;
    chunk_.resize(std::min(count, kChunk));
    std::uint64_t differ = 0;
    for (std::size_t first = 0; first < count; first += kChunk) {
      const std::size_t n = std::min(kChunk, count - first);
      float* mine = out_.data() + first;
      if (comm_.rank() == 0) std::memcpy(chunk_.data(), mine, n * sizeof(float));
      comm_.broadcast(TensorView(chunk_.data(), n, DType::kFloat32), 0)->wait();
      for (std::size_t i = 0; i < n; ++i) differ += std::memcmp(&chunk_[i], &mine[i], sizeof(float)) != 0;
    }
    return differ;
  }

  std::uint64_t reduce_u64(std::uint64_t value, MPI_Op op) {
    unsigned long long in = value, out = 0;
    check_mpi(MPI_Allreduce(&in, &out, 1, MPI_UNSIGNED_LONG_LONG, op, comm_.comm()), "MPI_Allreduce of a count",
              comm_.rank());
    return out;
  }

  double across_ranks(double seconds) {
    double out = seconds;
    const MPI_Comm c = comm_.comm();
    switch (o_.time_across_ranks) {
      case TimeAcrossRanks::kRank0:
        check_mpi(MPI_Bcast(&out, 1, MPI_DOUBLE, 0, c), "MPI_Bcast of the time", comm_.rank());
        break;
      case TimeAcrossRanks::kAverage:
        check_mpi(MPI_Allreduce(&seconds, &out, 1, MPI_DOUBLE, MPI_SUM, c), "MPI_Allreduce of the time", comm_.rank());
        out /= comm_.size();
        break;
      case TimeAcrossRanks::kMin:
        check_mpi(MPI_Allreduce(&seconds, &out, 1, MPI_DOUBLE, MPI_MIN, c), "MPI_Allreduce of the time", comm_.rank());
        break;
      case TimeAcrossRanks::kMax:
        check_mpi(MPI_Allreduce(&seconds, &out, 1, MPI_DOUBLE, MPI_MAX, c), "MPI_Allreduce of the time", comm_.rank());
        break;
    }
    return out;
  }

  MpiCommunicator& comm_;
  Communicator& xcomm_;
  launch::RankDevice device_;
  BenchOptions o_;
  std::optional<ModelTable> model_;
  std::vector<float> grad_, out_, chunk_;
  std::string note_;  // the last row's Runner::note()
  bool bound_printed_ = false;  // the -c bound is printed once, before the first row
};

const std::string kProgram = "gradcomm-bench";

std::string message_of(const std::exception& e) {
  const auto* error = dynamic_cast<const Error*>(&e);
  return error ? error->message() : e.what();
}

// --model-slice A:B: only tensors A to B-1 (B 0: to the end) of the table.
void keep_slice(ModelTable& model, std::size_t first, std::size_t last_plus_one) {
  const std::size_t end = last_plus_one == 0 ? model.layers.size() : last_plus_one;
  GRADCOMM_CHECK_ARG(first < end && end <= model.layers.size(), "--model-slice ", first, ":", last_plus_one,
                     " outside the ", model.layers.size(), " tensors of ", model.name);
  model.layers = std::vector<LayerSpec>(model.layers.begin() + static_cast<std::ptrdiff_t>(first),
                                        model.layers.begin() + static_cast<std::ptrdiff_t>(end));
  model.params = model.params_1d = 0;
  for (const LayerSpec& l : model.layers) {
    model.params += l.numel;
    if (l.ndim == 1) model.params_1d += l.numel;
  }
  model.source += ", tensors " + std::to_string(first) + " to " + std::to_string(end - 1);
}

// This rank's command line and --model table, read before it talks to any other rank.
void prepare_locally(int argc, char** argv, BenchOptions& options, std::optional<ModelTable>& model,
                     launch::RankDevice& device, launch::LocalStart& start) {
  // Read once: bench/netem/run describes the emulated link it runs us under.
  const char* netem_link = std::getenv("GRADCOMM_NETEM_LINK");
  try {
    options = parse_bench_options(argc, argv, GRADCOMM_BENCH_MODELS_DIR, netem_link ? netem_link : "unshaped");
    if (options.help) start.ask_help();
    else if (!options.model.empty()) {
      model = load_model(options.model, options.models_dir);
      if (options.slice_first > 0 || options.slice_end > 0) keep_slice(*model, options.slice_first, options.slice_end);
    }
    if (!options.help) device = launch::take_device(options.device);
  } catch (const std::exception& e) {
    start.fail(message_of(e));
  }
}

// Whether the largest row fits in this node's memory next to the node's other ranks, and
// whether rank 0 can write --json. ranks_on_this_node() runs on every rank.
void check_node(const MpiCommunicator& comm, const BenchOptions& o, const std::optional<ModelTable>& model,
                launch::LocalStart& start) {
  const int ranks_here = launch::ranks_on_this_node(comm);
  if (start.failed() || start.wants_help()) return;
  const double bytes = model ? 4.0 * static_cast<double>(model->params) : static_cast<double>(o.max_bytes);
  const std::string what = model ? "--model " + model->name : "a row of " + launch::human_bytes(bytes) + " (-e)";
  // Open MPI and the program's own buffers take about 64 MiB per rank besides the row.
  const double per_rank = bytes / 4 * find_runner(o.compressor).bytes_per_element + 64.0 * (1 << 20);
  const std::string shortfall = launch::memory_shortfall(per_rank, ranks_here, launch::available_memory(),
                                                         what + " with --compressor " + o.compressor);
  if (!shortfall.empty()) start.fail(shortfall + (model ? "; run fewer ranks per node" : "; lower -e, or run fewer ranks per node"));
  if (comm.rank() == 0 && !o.json_path.empty()) {
    const std::string unwritable = launch::unwritable_output("--json", o.json_path);
    if (!unwritable.empty()) start.fail(unwritable);
  }
}

}  // namespace
}  // namespace gradcomm::bench

int main(int argc, char** argv) {
  using namespace gradcomm;
  using namespace gradcomm::bench;
  BenchOptions options;
  std::optional<ModelTable> model;
  launch::RankDevice device;
  launch::LocalStart start;
  prepare_locally(argc, argv, options, model, device, start);
  // A rank that failed above still initializes MPI, to tell the others in
  // agree_to_start() instead of leaving them waiting.
  std::unique_ptr<MpiCommunicator> mpi;
  try {
    mpi = std::make_unique<MpiCommunicator>(MpiCommunicatorOptions{.collective_timeout = options.timeout});
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", kProgram.c_str(), message_of(e).c_str());
    return 1;
  }
  MpiCommunicator& comm = *mpi;
  try {
    check_node(comm, options, model, start);
    launch::Verdict verdict = launch::agree_to_start(comm, start, kProgram);
    if (verdict.go) {
      verdict = launch::agree_on_settings(comm, bench_settings(options, model ? table_fingerprint(*model) : ""),
                                          kProgram);
    }
    if (!verdict.go) {
      if (verdict.print_usage) std::fputs(bench_usage().c_str(), stdout);
      if (!verdict.message.empty()) std::fprintf(stderr, "%s\n", verdict.message.c_str());
      return verdict.exit_status;
    }
    // The hosts of a hierarchical exchange (collective; every rank agreed on the flags).
    std::unique_ptr<MpiHostCommunicators> hosts;
    if (options.runner.hierarchy != Hierarchy::kFlat) {
      hosts = std::make_unique<MpiHostCommunicators>(comm, options.runner.ranks_per_host);
      options.runner.hosts = hosts->get();
    }
    // The plan, with the links it was made from: on --model runs, and wherever the cost
    // model chose (auto), so a choice can be checked against what was measured.
    options.runner.print_plan = model.has_value() || options.runner.exchange == ExchangeChoice::kAuto ||
                                options.runner.hierarchy == Hierarchy::kAuto;
    // --device cuda: NCCL's setup is the next collective (or MPI stages device buffers).
    std::string transport;
    std::unique_ptr<Communicator> device_comm = launch::device_communicator(comm, device, options.timeout, transport);
    if (device.device != Device::kCpu) {
      std::printf("%s: rank %d exchanges on %s over %s\n", kProgram.c_str(), comm.rank(), device.description.c_str(),
                  transport.c_str());
      std::fflush(stdout);
    }
    return Bench(comm, device_comm ? *device_comm : comm, device, std::move(options), std::move(model)).run() == 0
               ? 0
               : 1;
  } catch (const std::exception& e) {
    // This may have happened on this rank alone; the others would wait for it.
    const auto* error = dynamic_cast<const Error*>(&e);
    launch::abort_job(comm, kProgram,
                      error ? error->message() + " [" + error_code_name(error->code()) + "] (at " + error->where() + ")"
                            : std::string(e.what()));
  }
}
