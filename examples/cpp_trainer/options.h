// Command-line options of gradcomm-train.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace trainer {

struct Options {
  std::string model = "mlp";        // mlp|cnn
  std::string compressor = "none";  // none|dgc|quant|lgreco-dgc|lgreco-quant
  std::string optimizer = "sgd";    // sgd|adam|onebit-adam
  double density = 0.001;           // dgc: target density after warm-up
  int bits = 4;                     // quant: bits per element
  int epochs = 40;
  std::uint64_t seed = 1;
  std::string json;                 // write the summary here
  std::optional<double> lr;         // unset: the optimizer's default (sgd 0.05, adam 2e-3)
  std::size_t batch = 16;           // per rank
  double momentum = 0.9;
  double weight_decay = 1e-4;
  std::vector<std::size_t> hidden = {256, 128, 64};  // uneven widths: layers differ in shape
  bool fp16_wire = false;           // fp16 values/dense tensors on the wire
  std::string nonfinite = "error";  // error|skip_step|zero
  std::string exchange = "compressor";  // compressor|auto|dense|allgather|reduce_scatter
  std::string hierarchy = "flat";       // flat|hierarchical|auto
  std::string device = "cpu";           // cpu|cuda: where gradients are exchanged
  int ranks_per_host = 0;               // hosts for --hierarchy: 0 = the ranks sharing memory
  double freeze_fraction = 0.2;     // onebit-adam: warm-up share of all steps
  bool onebit_precondition = true;  // onebit-adam: compress m/(sqrt(v)+eps) (0: the reference)
  double onebit_eps = 1e-5;         // onebit-adam: eps (1e-8 diverges after the freeze on digits)
  bool quiet = false;               // no per-epoch lines
  std::string checkpoint_dir;       // "" = no checkpoints
  int checkpoint_every_epochs = 1;  // save after every N-th epoch (and the last one run)
  bool resume = false;              // continue from the latest checkpoint in checkpoint_dir
  int stop_after_epoch = 0;         // > 0: end after this epoch (saved), to resume later
  std::string digits;               // path of digits.csv.gz ("" = python3-sklearn's)
  // The watchdog of every collective (MpiCommunicatorOptions::collective_timeout); 0: off.
  std::chrono::milliseconds timeout{kDefaultTimeout};

  // The last epoch this process runs (counted from 1).
  int last_epoch() const noexcept { return stop_after_epoch > 0 ? stop_after_epoch : epochs; }

  // A step of the digits models takes milliseconds and nothing between two collectives
  // takes more than a few seconds (a checkpoint's fsync, the test-set accuracy), even with
  // 4 ranks on 2 cores under a sanitizer: 2 minutes is over 10x that, and a stopped peer
  // still ends the job in 2 minutes.
  static constexpr std::chrono::milliseconds kDefaultTimeout{120'000};
};

// Parses and checks argv on this rank alone: every value's range, NaN and overflow, and
// the combinations the trainer refuses. Throws std::invalid_argument naming the flag.
// Returns false when --help was asked.
bool parse_options(int argc, char** argv, Options& options);
std::string usage();

// One setting of the run as the command line gives it ("--lr", "0.01").
struct Setting {
  std::string flag;
  std::string value;
  // Part of the trajectory: a resumed run must have the checkpoint's value (checkpoints.h);
  // the others (where to save, when to stop, the timeout) may change between runs.
  bool trajectory;
};

// Every setting that changes which collectives run, what they carry or what the replicas
// compute; all must agree across ranks. Not here: --json and --quiet (rank 0's output
// only) and the --digits path (ranks agree on the data read instead).
std::vector<Setting> run_settings(const Options& options);

// --hidden as the command line writes it: "256,128,64".
std::string hidden_text(const Options& options);

}  // namespace trainer
