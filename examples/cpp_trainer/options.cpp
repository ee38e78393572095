#include "options.h"

#include <iostream>
#include <sstream>
#include <stdexcept>

namespace trainer {

std::string usage() {
  return R"(gradcomm-train: data-parallel MLP or CNN on the digits data set, gradients exchanged by gradcomm.
Run under mpirun, e.g.  mpirun -np 4 gradcomm-train --compressor dgc --density 0.001

  --model NAME         mlp | cnn (conv 16, conv 32, pool, dense 64, 10) (default mlp)
  --compressor NAME    none | dgc | quant | lgreco-dgc | lgreco-quant   (default none)
  --optimizer NAME     sgd | adam | onebit-adam                          (default sgd)
  --density D          DGC density after warm-up                         (default 0.001)
  --bits B             quantization bits                                 (default 4)
  --epochs N           (default 40)        --seed S        (default 1)
  --lr X               (default: sgd 0.05, adam 0.002)
  --batch N            per-rank batch      (default 16)
  --momentum M         (default 0.9)       --weight-decay W (default 1e-4)
  --hidden A,B,...     mlp hidden widths   (default 256,128,64)
  --fp16-wire          fp16 values on the wire
  --nonfinite P        error | skip_step | zero (default error)
  --exchange E         how DGC's sparse layers cross the ranks: compressor (its allgather),
                       auto (the cost model picks per layer), dense, allgather, reduce_scatter
                       (the sparse allreduce; docs/algorithms/sparse-allreduce.md) (default compressor)
  --hierarchy H        flat | hierarchical (dense sum inside each host, the exchange across
                       hosts) | auto (default flat); the plan is printed unless --quiet
  --ranks-per-host R   hosts of R consecutive ranks for --hierarchy (default 0: the ranks
                       sharing memory, MPI_COMM_TYPE_SHARED)
  --freeze-fraction F  onebit-adam warm-up share of the steps (default 0.2)
  --onebit-precondition 0|1  onebit-adam compresses m/(sqrt(v)+eps), robust (default 1);
                       0 compresses m as the reference does (diverges on digits, see docs)
  --onebit-eps E       onebit-adam eps (default 1e-5: with 1e-8 the frozen variance of
                       rarely active inputs blows the sign scale up; docs/algorithms/onebit-adam.md)
  --json FILE          write {"test_accuracy", "bytes_per_step", "time_per_step_ms", "steps",
                       "parameters_fingerprint", ...}
  --checkpoint-dir DIR save a checkpoint (one shard per rank: parameters, optimizer and
                       compressor state) into DIR; only the newest is kept. A fresh run
                       refuses a DIR that already holds one (use --resume)
  --checkpoint-every-epochs N  save after every N-th epoch and after the last (default 1)
  --resume             continue from the newest checkpoint in --checkpoint-dir, bitwise as
                       if never stopped; needs the same settings and number of ranks
                       (--epochs may grow, except with onebit-adam, whose freeze step follows it)
  --stop-after-epoch K end after epoch K, saving a checkpoint there (needs --checkpoint-dir)
  --digits PATH        digits.csv.gz (default: the file python3-sklearn ships)
  --quiet              no per-epoch lines
)";
}

namespace {
template <typename T>
T parse_number(const std::string& flag, const std::string& text) {
  std::istringstream in(text);
  T value{};
  if (!(in >> value) || !in.eof()) throw std::invalid_argument(flag + ": '" + text + "' is not a number");
  return value;
}
}  // namespace

bool parse_options(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(flag + " needs a value");
      return argv[++i];
    };
    if (flag == "--help" || flag == "-h") {
      std::cout << usage();
      return false;
    } else if (flag == "--model") o.model = value();
    else if (flag == "--compressor") o.compressor = value();
    else if (flag == "--optimizer") o.optimizer = value();
    else if (flag == "--density") o.density = parse_number<double>(flag, value());
    else if (flag == "--bits") o.bits = parse_number<int>(flag, value());
    else if (flag == "--epochs") o.epochs = parse_number<int>(flag, value());
    else if (flag == "--seed") o.seed = parse_number<std::uint64_t>(flag, value());
    else if (flag == "--json") o.json = value();
    else if (flag == "--lr") o.lr = parse_number<double>(flag, value());
    else if (flag == "--batch") o.batch = parse_number<std::size_t>(flag, value());
    else if (flag == "--momentum") o.momentum = parse_number<double>(flag, value());
    else if (flag == "--weight-decay") o.weight_decay = parse_number<double>(flag, value());
    else if (flag == "--fp16-wire") o.fp16_wire = true;
    else if (flag == "--nonfinite") o.nonfinite = value();
    else if (flag == "--exchange") o.exchange = value();
    else if (flag == "--hierarchy") o.hierarchy = value();
    else if (flag == "--ranks-per-host") o.ranks_per_host = parse_number<int>(flag, value());
    else if (flag == "--freeze-fraction") o.freeze_fraction = parse_number<double>(flag, value());
    else if (flag == "--onebit-precondition") o.onebit_precondition = parse_number<int>(flag, value()) != 0;
    else if (flag == "--onebit-eps") o.onebit_eps = parse_number<double>(flag, value());
    else if (flag == "--digits") o.digits = value();
    else if (flag == "--quiet") o.quiet = true;
    else if (flag == "--checkpoint-dir") o.checkpoint_dir = value();
    else if (flag == "--checkpoint-every-epochs") o.checkpoint_every_epochs = parse_number<int>(flag, value());
    else if (flag == "--resume") o.resume = true;
    else if (flag == "--stop-after-epoch") o.stop_after_epoch = parse_number<int>(flag, value());
    else if (flag == "--hidden") {
      o.hidden.clear();
      std::stringstream list(value());
      std::string item;
      while (std::getline(list, item, ',')) o.hidden.push_back(parse_number<std::size_t>(flag, item));
    } else {
      throw std::invalid_argument("unknown flag '" + flag + "' (see --help)");
    }
  }
  if (o.model != "mlp" && o.model != "cnn") throw std::invalid_argument("--model must be mlp or cnn");
  if (o.epochs < 1) throw std::invalid_argument("--epochs must be at least 1");
  if (o.batch < 1) throw std::invalid_argument("--batch must be at least 1");
  if (o.hidden.empty()) throw std::invalid_argument("--hidden needs at least one width");
  for (std::size_t w : o.hidden)
    if (w == 0) throw std::invalid_argument("--hidden widths must be positive");
  if (o.ranks_per_host < 0) throw std::invalid_argument("--ranks-per-host must be >= 0");
  if (o.checkpoint_every_epochs < 1) throw std::invalid_argument("--checkpoint-every-epochs must be at least 1");
  if (o.stop_after_epoch < 0) throw std::invalid_argument("--stop-after-epoch must be positive");
  if (o.checkpoint_dir.empty() && (o.resume || o.stop_after_epoch > 0))
    throw std::invalid_argument(std::string(o.resume ? "--resume" : "--stop-after-epoch") + " needs --checkpoint-dir");
  return true;
}

}  // namespace trainer
