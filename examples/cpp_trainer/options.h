// Command-line options of gradcomm-train.
#pragma once

#include <cstdint>
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
  double lr = -1;                   // <0: the optimizer's default (sgd 0.05, adam 2e-3)
  std::size_t batch = 16;           // per rank
  double momentum = 0.9;
  double weight_decay = 1e-4;
  std::vector<std::size_t> hidden = {256, 128, 64};  // uneven widths: layers differ in shape
  bool fp16_wire = false;           // fp16 values/dense tensors on the wire
  std::string nonfinite = "error";  // error|skip_step|zero
  std::string exchange = "compressor";  // compressor|auto|dense|allgather|reduce_scatter
  std::string hierarchy = "flat";       // flat|hierarchical|auto
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
};

// Parses argv; throws std::invalid_argument with a message naming the flag on error.
// Returns false when --help was asked (usage printed).
bool parse_options(int argc, char** argv, Options& options);
std::string usage();

}  // namespace trainer
