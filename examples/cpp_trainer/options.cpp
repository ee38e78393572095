#include "options.h"

#include <sstream>
#include <stdexcept>

#include "launch/flags.h"
#include "launch/settings.h"

namespace trainer {

std::string usage() {
  return R"(gradcomm-train: data-parallel MLP or CNN on the digits data set, gradients exchanged by gradcomm.
Run under mpirun, e.g.  mpirun -np 4 gradcomm-train --compressor dgc --density 0.001
Every rank must be given the same settings: the ranks check that they agree before training.

  --model NAME         mlp | cnn (conv 16, conv 32, pool, dense 64, 10) (default mlp)
  --compressor NAME    none | dgc | quant | lgreco-dgc | lgreco-quant   (default none)
  --optimizer NAME     sgd | adam | onebit-adam                          (default sgd)
                       (adam cannot follow dgc or lgreco-dgc, whose update carries momentum;
                       onebit-adam compresses itself and needs --compressor none)
  --density D          DGC density after warm-up, in (0, 1]              (default 0.001)
  --bits B             quantization bits, 1 to 8                         (default 4)
  --epochs N           1 to 1000000 (default 40)        --seed S  (default 1)
  --lr X               > 0 (default: sgd 0.05, adam and onebit-adam 0.002)
  --batch N            per-rank batch, at least 1; N * ranks must fit the 1437 training
                       samples (default 16)
  --momentum M         in [0, 1) (default 0.9)          --weight-decay W >= 0 (default 1e-4)
  --hidden A,B,...     mlp hidden widths, 1 to 1048576 each (default 256,128,64)
  --fp16-wire          fp16 values on the wire
  --nonfinite P        error | skip_step | zero (default error)
  --exchange E         how DGC's sparse layers cross the ranks: compressor (its allgather),
                       auto (the cost model picks per layer), dense, allgather, reduce_scatter
                       (the sparse allreduce; docs/algorithms/sparse-allreduce.md) (default compressor)
  --hierarchy H        flat | hierarchical (dense sum inside each host, the exchange across
                       hosts) | auto (default flat); the plan is printed unless --quiet
  --ranks-per-host R   hosts of R consecutive ranks for --hierarchy (default 0: the ranks
                       sharing memory, MPI_COMM_TYPE_SHARED)
  --device D           cpu | cuda (default cpu): where gradients are exchanged; cuda: each rank
                       takes its local GPU (OMPI_COMM_WORLD_LOCAL_RANK or LOCAL_RANK) and says
                       which, the model's own arithmetic stays on the host, its gradients are
                       copied to the GPU, compressed and exchanged there (NCCL when built with
                       it, else MPI staging through pinned memory) and the updates copied back
  --freeze-fraction F  onebit-adam warm-up share of the steps, in (0, 1] (default 0.2)
  --onebit-precondition 0|1  onebit-adam compresses m/(sqrt(v)+eps), robust (default 1);
                       0 compresses m as the reference does (diverges on digits, see docs)
  --onebit-eps E       onebit-adam eps > 0 (default 1e-5: with 1e-8 the frozen variance of
                       rarely active inputs blows the sign scale up; docs/algorithms/onebit-adam.md)
  --timeout SECONDS    a collective that has not completed after this long ends the job with
                       an error naming it (a stopped or dead peer); 0 waits forever (default 120)
  --json FILE          write {"test_accuracy", "bytes_per_step", "time_per_step_ms", "steps",
                       "parameters_fingerprint", ...} (rank 0)
  --checkpoint-dir DIR save a checkpoint (one shard per rank: parameters, optimizer and
                       compressor state) into DIR; only the newest is kept. A fresh run
                       refuses a DIR that already holds one (use --resume)
  --checkpoint-every-epochs N  save after every N-th epoch and after the last (default 1)
  --resume             continue from the newest checkpoint in --checkpoint-dir, bitwise as
                       if never stopped; needs the same settings and number of ranks
                       (--epochs may grow, except with onebit-adam, whose freeze step follows it)
  --stop-after-epoch K end after epoch K (at most --epochs), saving a checkpoint there
                       (needs --checkpoint-dir)
  --digits PATH        digits.csv.gz (default: the file python3-sklearn ships)
  --quiet              no per-epoch lines
)";
}

namespace {

constexpr std::int64_t kMaxEpochs = 1'000'000;

int parse_int(const std::string& flag, const std::string& text, std::int64_t lo, std::int64_t hi) {
  return static_cast<int>(launch::parse_integer(flag, text, lo, hi));
}

void expect_one_of(const std::string& flag, const std::string& value, std::initializer_list<const char*> names) {
  std::string list;
  for (const char* name : names) {
    if (value == name) return;
    list += (list.empty() ? "" : " | ") + std::string(name);
  }
  throw std::invalid_argument(flag + " '" + value + "': expected " + list);
}

// What the flags mean together; each value's own range is checked as it is read.
void check_combination(const Options& o) {
  expect_one_of("--model", o.model, {"mlp", "cnn"});
  expect_one_of("--compressor", o.compressor, {"none", "dgc", "quant", "lgreco-dgc", "lgreco-quant"});
  expect_one_of("--optimizer", o.optimizer, {"sgd", "adam", "onebit-adam"});
  expect_one_of("--nonfinite", o.nonfinite, {"error", "skip_step", "zero"});
  expect_one_of("--exchange", o.exchange, {"compressor", "auto", "dense", "allgather", "reduce_scatter"});
  expect_one_of("--hierarchy", o.hierarchy, {"flat", "hierarchical", "auto"});
  expect_one_of("--device", o.device, {"cpu", "cuda"});
  if (o.device == "cuda" && (o.optimizer == "onebit-adam" || o.exchange != "compressor" || o.hierarchy != "flat")) {
    throw std::invalid_argument("--device cuda exchanges through the compressor's own exchange, flat: it takes "
                                "neither --optimizer onebit-adam nor --exchange/--hierarchy other than their defaults");
  }
  const bool compressor_has_momentum = o.compressor == "dgc" || o.compressor == "lgreco-dgc";
  if (o.optimizer == "adam" && compressor_has_momentum) {
    throw std::invalid_argument("--optimizer adam cannot follow --compressor " + o.compressor +
                                ", whose update already carries momentum; use sgd");
  }
  if (o.optimizer == "onebit-adam" && o.compressor != "none") {
    throw std::invalid_argument("--optimizer onebit-adam compresses momentum itself; it cannot follow --compressor " +
                                o.compressor);
  }
  if (o.checkpoint_dir.empty() && (o.resume || o.stop_after_epoch > 0))
    throw std::invalid_argument(std::string(o.resume ? "--resume" : "--stop-after-epoch") + " needs --checkpoint-dir");
  if (o.stop_after_epoch > o.epochs) {
    throw std::invalid_argument("--stop-after-epoch " + std::to_string(o.stop_after_epoch) + " is past --epochs " +
                                std::to_string(o.epochs));
  }
}

}  // namespace

bool parse_options(int argc, char** argv, Options& o) {
  bool help = false;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(flag + " needs a value");
      return argv[++i];
    };
    if (flag == "--help" || flag == "-h") help = true;
    else if (flag == "--model") o.model = value();
    else if (flag == "--compressor") o.compressor = value();
    else if (flag == "--optimizer") o.optimizer = value();
    else if (flag == "--density") o.density = launch::parse_real(flag, value(), {0.0, 1.0, true, false});
    else if (flag == "--bits") o.bits = parse_int(flag, value(), 1, 8);
    else if (flag == "--epochs") o.epochs = parse_int(flag, value(), 1, kMaxEpochs);
    else if (flag == "--seed") o.seed = launch::parse_unsigned(flag, value());
    else if (flag == "--json") o.json = value();
    else if (flag == "--lr") o.lr = launch::parse_real(flag, value(), {.lo = 0.0, .lo_open = true});
    else if (flag == "--batch") o.batch = static_cast<std::size_t>(launch::parse_integer(flag, value(), 1, 1 << 20));
    else if (flag == "--momentum") o.momentum = launch::parse_real(flag, value(), {0.0, 1.0, false, true});
    else if (flag == "--weight-decay") o.weight_decay = launch::parse_real(flag, value(), {.lo = 0.0});
    else if (flag == "--fp16-wire") o.fp16_wire = true;
    else if (flag == "--nonfinite") o.nonfinite = value();
    else if (flag == "--device") o.device = value();
    else if (flag == "--exchange") o.exchange = value();
    else if (flag == "--hierarchy") o.hierarchy = value();
    else if (flag == "--ranks-per-host") o.ranks_per_host = parse_int(flag, value(), 0, 1 << 20);
    else if (flag == "--freeze-fraction") o.freeze_fraction = launch::parse_real(flag, value(), {0.0, 1.0, true, false});
    else if (flag == "--onebit-precondition") o.onebit_precondition = launch::parse_integer(flag, value(), 0, 1) == 1;
    else if (flag == "--onebit-eps") o.onebit_eps = launch::parse_real(flag, value(), {.lo = 0.0, .lo_open = true});
    else if (flag == "--timeout") o.timeout = launch::parse_seconds(flag, value());
    else if (flag == "--digits") o.digits = value();
    else if (flag == "--quiet") o.quiet = true;
    else if (flag == "--checkpoint-dir") o.checkpoint_dir = value();
    else if (flag == "--checkpoint-every-epochs") o.checkpoint_every_epochs = parse_int(flag, value(), 1, kMaxEpochs);
    else if (flag == "--resume") o.resume = true;
    else if (flag == "--stop-after-epoch") o.stop_after_epoch = parse_int(flag, value(), 1, kMaxEpochs);
    else if (flag == "--hidden") {
      const std::string list = value();
      o.hidden.clear();
      std::stringstream items(list);
      std::string item;
      while (std::getline(items, item, ',')) {
        o.hidden.push_back(static_cast<std::size_t>(launch::parse_integer(flag, item, 1, 1 << 20)));
      }
      if (o.hidden.empty() || o.hidden.size() > 16 || list.back() == ',') {
        throw std::invalid_argument(flag + " '" + list + "': expected 1 to 16 comma-separated widths");
      }
    } else {
      throw std::invalid_argument("unknown flag '" + flag + "' (see --help)");
    }
  }
  if (help) return false;
  check_combination(o);
  return true;
}

std::string hidden_text(const Options& o) {
  std::string hidden;
  for (std::size_t w : o.hidden) hidden.append(hidden.empty() ? "" : ",").append(std::to_string(w));
  return hidden;
}

std::vector<Setting> run_settings(const Options& o) {
  const bool onebit = o.optimizer == "onebit-adam";
  // The trajectory's settings come first, in the order older checkpoints stored them.
  std::vector<Setting> s = {
      {"--model", o.model, true},
      {"--hidden", hidden_text(o), true},
      {"--compressor", o.compressor, true},
      {"--optimizer", o.optimizer, true},
      {"--density", launch::shortest(o.density), true},
      {"--bits", std::to_string(o.bits), true},
      {"--seed", std::to_string(o.seed), true},
      {"--lr", o.lr ? launch::shortest(*o.lr) : "default", true},
      {"--batch", std::to_string(o.batch), true},
      {"--momentum", launch::shortest(o.momentum), true},
      {"--weight-decay", launch::shortest(o.weight_decay), true},
      {"--fp16-wire", o.fp16_wire ? "1" : "0", true},
      {"--nonfinite", o.nonfinite, true},
      // onebit-adam's freeze step is a fraction of all steps: --epochs is part of its
      // trajectory. Other runs may be resumed with more epochs.
      {"--epochs", std::to_string(o.epochs), onebit},
      {"--freeze-fraction", launch::shortest(o.freeze_fraction), onebit},
      {"--onebit-precondition", o.onebit_precondition ? "1" : "0", onebit},
      {"--onebit-eps", launch::shortest(o.onebit_eps), onebit},
      // Stored only when set: checkpoints from before these flags resume as they were.
      {"--exchange", o.exchange, o.exchange != "compressor"},
      {"--hierarchy", o.hierarchy, o.hierarchy != "flat"},
      {"--ranks-per-host", std::to_string(o.ranks_per_host), o.hierarchy != "flat"},
      {"--device", o.device, false},
      {"--checkpoint-dir", o.checkpoint_dir, false},
      {"--checkpoint-every-epochs", std::to_string(o.checkpoint_every_epochs), false},
      {"--resume", o.resume ? "1" : "0", false},
      {"--stop-after-epoch", std::to_string(o.stop_after_epoch), false},
      {"--timeout", launch::shortest(static_cast<double>(o.timeout.count()) / 1e3), false},
  };
  return s;
}

}  // namespace trainer
