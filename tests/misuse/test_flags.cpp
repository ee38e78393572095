// Every flag of gradcomm-train and gradcomm-bench checked for range, NaN, infinities,
// overflow, signs and trailing text, without mpirun: the parsers run on each rank before
// any collective (examples/launch/start.h), so what they refuse here is what a rank
// refuses before it starts. check_misuse.py runs a few of these through mpirun.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "gradcomm/error.h"
#include "gradcomm_bench/bench_options.h"
#include "launch/flags.h"
#include "launch/settings.h"
#include "options.h"

namespace {

struct Refusal {
  std::vector<std::string> args;
  std::string says;  // a part of the message
};

std::vector<char*> argv_of(std::vector<std::string>& args) {
  std::vector<char*> argv = {const_cast<char*>("program")};
  for (std::string& a : args) argv.push_back(a.data());
  return argv;
}

std::string trainer_refusal(std::vector<std::string> args) {
  std::vector<char*> argv = argv_of(args);
  trainer::Options o;
  try {
    trainer::parse_options(static_cast<int>(argv.size()), argv.data(), o);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "(accepted)";
}

std::string bench_refusal(std::vector<std::string> args) {
  std::vector<char*> argv = argv_of(args);
  try {
    gradcomm::bench::parse_bench_options(static_cast<int>(argv.size()), argv.data(), "/models", "link");
  } catch (const gradcomm::Error& e) {
    return e.message();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "(accepted)";
}

void expect_refusals(const std::vector<Refusal>& refusals, std::string (*refusal)(std::vector<std::string>)) {
  for (const Refusal& r : refusals) {
    const std::string got = refusal(r.args);
    EXPECT_NE(got.find(r.says), std::string::npos) << "args " << testing::PrintToString(r.args) << ": got '" << got
                                                   << "', expected it to say '" << r.says << "'";
  }
}

TEST(TrainerFlags, RefusesEveryValueOutOfRange) {
  const std::vector<Refusal> refusals = {
      {{"--lr", "0"}, "--lr '0': expected a finite number > 0"},
      {{"--lr", "-1"}, "--lr '-1': expected a finite number > 0"},
      {{"--lr", "nan"}, "--lr 'nan': expected a finite number > 0"},
      {{"--lr", "inf"}, "--lr 'inf': expected a finite number > 0"},
      {{"--lr", "1e999"}, "--lr '1e999'"},
      {{"--lr", "0.1x"}, "--lr '0.1x'"},
      {{"--lr", ""}, "--lr '': expected"},
      {{"--momentum", "-1"}, "--momentum '-1': expected a finite number in [0, 1)"},
      {{"--momentum", "1"}, "--momentum '1': expected a finite number in [0, 1)"},
      {{"--weight-decay", "-1e-4"}, "--weight-decay '-1e-4': expected a finite number >= 0"},
      {{"--weight-decay", "inf"}, "--weight-decay 'inf'"},
      {{"--density", "0"}, "--density '0': expected a finite number in (0, 1]"},
      {{"--density", "1.5"}, "--density '1.5'"},
      {{"--density", "NaN"}, "--density 'NaN'"},
      {{"--bits", "0"}, "--bits '0': expected an integer in [1, 8]"},
      {{"--bits", "9"}, "--bits '9': expected an integer in [1, 8]"},
      {{"--bits", "4.5"}, "--bits '4.5'"},
      {{"--epochs", "0"}, "--epochs '0': expected an integer in [1, 1000000]"},
      {{"--epochs", "-3"}, "--epochs '-3'"},
      {{"--epochs", "99999999999999999999"}, "--epochs '99999999999999999999'"},
      {{"--batch", "0"}, "--batch '0': expected an integer in [1, 1048576]"},
      {{"--batch", "-1"}, "--batch '-1'"},
      {{"--batch", "1e3"}, "--batch '1e3'"},
      {{"--batch", "100000000000000"}, "--batch '100000000000000'"},
      {{"--seed", "-1"}, "--seed '-1': expected an integer in [0, 18446744073709551615]"},
      {{"--seed", "18446744073709551616"}, "--seed '18446744073709551616'"},
      {{"--seed", " 5"}, "--seed ' 5'"},
      {{"--hidden", ""}, "--hidden '': expected"},
      {{"--hidden", "0"}, "--hidden '0': expected an integer in [1, 1048576]"},
      {{"--hidden", "64,,32"}, "--hidden '': expected an integer"},
      {{"--hidden", "64,"}, "--hidden '64,': expected 1 to 16 comma-separated widths"},
      {{"--hidden", "2000000"}, "--hidden '2000000'"},
      {{"--hidden", "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1"}, "expected 1 to 16 comma-separated widths"},
      {{"--freeze-fraction", "0"}, "--freeze-fraction '0': expected a finite number in (0, 1]"},
      {{"--freeze-fraction", "1.5"}, "--freeze-fraction '1.5'"},
      {{"--onebit-precondition", "2"}, "--onebit-precondition '2': expected an integer in [0, 1]"},
      {{"--onebit-eps", "0"}, "--onebit-eps '0': expected a finite number > 0"},
      {{"--timeout", "-1"}, "--timeout '-1': expected a finite number in [0, 1000000]"},
      {{"--timeout", "nan"}, "--timeout 'nan'"},
      {{"--timeout", "1e7"}, "--timeout '1e7'"},
      {{"--checkpoint-every-epochs", "0"}, "--checkpoint-every-epochs '0'"},
      {{"--stop-after-epoch", "0"}, "--stop-after-epoch '0': expected an integer in [1, 1000000]"},
      {{"--checkpoint-dir", "d", "--epochs", "10", "--stop-after-epoch", "11"}, "--stop-after-epoch 11 is past --epochs 10"},
      {{"--stop-after-epoch", "1"}, "--stop-after-epoch needs --checkpoint-dir"},
      {{"--resume"}, "--resume needs --checkpoint-dir"},
      {{"--model", "resnet"}, "--model 'resnet': expected mlp | cnn"},
      {{"--compressor", "topk"}, "--compressor 'topk': expected none | dgc | quant | lgreco-dgc | lgreco-quant"},
      {{"--optimizer", "lamb"}, "--optimizer 'lamb': expected sgd | adam | onebit-adam"},
      {{"--nonfinite", "ignore"}, "--nonfinite 'ignore': expected error | skip_step | zero"},
      {{"--optimizer", "adam", "--compressor", "dgc"}, "--optimizer adam cannot follow --compressor dgc"},
      {{"--optimizer", "adam", "--compressor", "lgreco-dgc"}, "cannot follow --compressor lgreco-dgc"},
      {{"--optimizer", "onebit-adam", "--compressor", "quant"}, "it cannot follow --compressor quant"},
      {{"--device", "gpu"}, "--device 'gpu': expected cpu | cuda"},
      {{"--device", "cuda", "--optimizer", "onebit-adam"}, "--device cuda exchanges through the compressor's own"},
      {{"--device", "cuda", "--compressor", "dgc", "--exchange", "reduce_scatter"}, "neither --optimizer onebit-adam"},
      {{"--exchange", "ring"}, "--exchange 'ring': expected compressor | auto | dense | allgather | reduce_scatter"},
      {{"--hierarchy", "tree"}, "--hierarchy 'tree': expected flat | hierarchical | auto"},
      {{"--ranks-per-host", "-1"}, "--ranks-per-host '-1'"},
      {{"--learning-rate", "0.1"}, "unknown flag '--learning-rate' (see --help)"},
      {{"--epochs"}, "--epochs needs a value"},
  };
  expect_refusals(refusals, trainer_refusal);
}

TEST(TrainerFlags, AcceptsTheirRangesAndDefaultsToATimeout) {
  trainer::Options o;
  std::vector<std::string> args = {"--lr", "1e-3", "--momentum", "0", "--seed", "18446744073709551615",
                                   "--timeout", "0.0001", "--hidden", "1,1048576", "--freeze-fraction", "1"};
  std::vector<char*> argv = argv_of(args);
  ASSERT_TRUE(trainer::parse_options(static_cast<int>(argv.size()), argv.data(), o));
  EXPECT_EQ(o.lr, 1e-3);
  EXPECT_EQ(o.seed, 18446744073709551615ull);
  EXPECT_EQ(o.timeout.count(), 1);  // under a millisecond still times out
  EXPECT_EQ(trainer_refusal({}), "(accepted)");
  trainer::Options defaults;
  EXPECT_FALSE(defaults.lr.has_value());  // the optimizer's own default, not a sentinel
  EXPECT_EQ(defaults.timeout.count(), 120'000);
  std::vector<std::string> off = {"--timeout", "0"};
  std::vector<char*> off_argv = argv_of(off);
  ASSERT_TRUE(trainer::parse_options(static_cast<int>(off_argv.size()), off_argv.data(), o));
  EXPECT_EQ(o.timeout.count(), 0);
}

TEST(BenchFlags, RefusesEveryValueOutOfRange) {
  const std::vector<Refusal> refusals = {
      {{"-b", "0"}, "-b 0 is below one float32 element (4 bytes)"},
      {{"-b", "-1"}, "-b '-1': expected a byte count"},
      {{"-b", "1T"}, "-b '1T': expected a byte count with an optional K, M or G suffix"},
      {{"-e", "18446744073709551616"}, "-e '18446744073709551616': expected a byte count"},
      {{"-e", "99999999999G"}, "-e '99999999999G': expected a byte count that fits in 64 bits"},
      {{"-b", "1M", "-e", "1K"}, "-b 1048576 is larger than -e 1024"},
      {{"-f", "1"}, "-f 1 must be greater than 1"},
      {{"-f", "nan"}, "-f 'nan': expected a finite number >= 0"},
      {{"-f", "inf"}, "-f 'inf'"},
      {{"-f", "-2"}, "-f '-2'"},
      {{"-b", "4", "-e", "1M", "-i", "0"}, "-i 0 would never get from -b to -e"},
      {{"-b", "4", "-e", "1G", "-i", "4"}, "makes 268435456 rows; at most 1000"},
      {{"-b", "4", "-e", "1G", "-f", "1.0001"}, "rows; at most 1000"},
      {{"-n", "0"}, "-n '0': expected an integer in [1, 1073741824]"},
      {{"-n", "2147483648"}, "-n '2147483648'"},
      {{"-w", "-1"}, "-w '-1': expected an integer in [0, 1073741824]"},
      {{"-c", "2"}, "-c '2': expected an integer in [0, 1]"},
      {{"-a", "4"}, "-a '4': expected an integer in [0, 3]"},
      {{"--density", "0"}, "--density '0': expected a finite number in (0, 1]"},
      {{"--density", "nan"}, "--density 'nan'"},
      {{"--bits", "9"}, "--bits '9': expected an integer in [1, 8]"},
      {{"--lgreco-period", "0"}, "--lgreco-period '0': expected an integer in [1, 1073741824]"},
      {{"--bucket-bytes", "0"}, "--bucket-bytes must be positive"},
      {{"--seed", "-1"}, "--seed '-1'"},
      {{"--timeout", "-5"}, "--timeout '-5': expected a finite number in [0, 1000000]"},
      {{"--compressor", "mpi", "-b", "16G", "-e", "16G"}, "with --compressor mpi: over MPI's int count"},
      {{"--compressor", "topk"}, "unknown compressor 'topk' (available: none, fp16, mpi"},
      {{"--iters"}, "--iters needs a value (see -h)"},
      {{"--frobnicate", "1"}, "unknown flag '--frobnicate' (see -h)"},
      {{"--device", "tpu"}, "--device 'tpu': expected cpu or cuda"},
      {{"--device", "cuda", "--compressor", "onebit"}, "--device cuda with --compressor onebit: runs on the host only"},
      {{"--device", "cuda", "--compressor", "dgc", "--exchange", "reduce_scatter"}, "--device cuda takes the compressor's own exchange"},
      {{"--exchange", "ring"}, "unknown exchange 'ring'"},
      {{"--hierarchy", "tree"}, "unknown hierarchy 'tree'"},
      {{"--model-slice", "3"}, "--model-slice '3' is not of the form A:B"},
  };
  expect_refusals(refusals, bench_refusal);
  EXPECT_EQ(bench_refusal({"-b", "8", "-e", "1G", "-f", "2", "--timeout", "0", "--seed", "18446744073709551615"}),
            "(accepted)");
  EXPECT_EQ(gradcomm::bench::BenchOptions{}.timeout.count(), 300'000);
}

// The words of the settings agreement: one per setting, values with spaces kept whole.
TEST(SettingsText, OneWordPerSettingWithShortestNumbers) {
  launch::SettingsText s;
  s.add("--lr", 0.1).add("--dir", "/a b/100%").add("--n", 3).add("--on", true);
  EXPECT_EQ(s.text(), "--lr=0.1 --dir=/a%20b/100%25 --n=3 --on=1");
  EXPECT_EQ(launch::shortest(1e-5), "1e-05");
}

}  // namespace
