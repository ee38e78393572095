// --checkpoint-dir / --resume: gradcomm-train's checkpoints, through the library's
// collective save_checkpoint / load_checkpoint (include/gradcomm/checkpoint.h). One save
// is the shards "<dir>/epoch-NNNNNN.rank<r>.ckpt": the compressor state (or, for 1-bit
// Adam, which runs no Exchanger, the unused dense compressor's empty one) plus the
// trainer's sections: the settings the run's future depends on, the progress counters,
// the parameters and the optimizer state.
//
// Resuming only at epoch boundaries keeps the rest exact for free: the shuffle is seeded
// from seed + epoch, set_epoch() is called at the start of each epoch, and the L-GreCo
// planner holds nothing its future depends on (re-plans follow the restored step; the plan
// in force is part of the compressor state; its stats only feed the log lines).
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "training.h"

namespace trainer {

// A blob of counters and length-prefixed float tensors, for the trainer's own sections.
// The shard's CRC32C already catches damage; the reader's checks catch a checkpoint of
// other shapes, with std::runtime_error naming `what` and the field.
class StateWriter {
 public:
  void u64(std::uint64_t value);
  void floats(std::span<const float> values);
  const std::vector<std::byte>& bytes() const noexcept { return out_; }

 private:
  std::vector<std::byte> out_;
};

class StateReader {
 public:
  StateReader(std::span<const std::byte> blob, std::string what) : in_(blob), what_(std::move(what)) {}
  std::uint64_t u64(const std::string& field);
  // A tensor saved with exactly into.size() floats.
  void floats(std::span<float> into, const std::string& field);
  void finish() const;  // throws on trailing bytes

 private:
  void take(void* dst, std::size_t bytes, const std::string& field);
  std::span<const std::byte> in_;
  std::size_t at_ = 0;
  std::string what_;
};

// One state tensor per parameter (optimizer buffers), or none before the first step.
void save_tensors(StateWriter& w, const std::vector<std::vector<float>>& tensors);
void load_tensors(StateReader& r, std::vector<std::vector<float>>& tensors, const std::vector<Parameter>& params,
                  const std::string& field);

// Where a run stands between two epochs.
struct Progress {
  int epochs_done = 0;
  std::int64_t step = 0;          // steps done, also the Exchanger's
  std::uint64_t total_bytes = 0;  // wire bytes this rank sent so far
};

class TrainerCheckpoints {
 public:
  // `compressor` is the exchanger's, or the standalone one when `exchanger` is null.
  // Every reference must outlive this object.
  TrainerCheckpoints(const Options& options, gradcomm::Communicator& comm, gradcomm::Exchanger* exchanger,
                     gradcomm::Compressor& compressor, std::vector<Parameter>& params, Optimizer& optimizer);

  // Collective. Without --checkpoint-dir: a fresh start. A fresh run creates the directory
  // and refuses one that holds a checkpoint already; --resume loads the newest
  // checkpoint and returns its progress. Errors are thrown on every rank alike:
  // std::invalid_argument for a wrong command line (no checkpoint, nothing left to train),
  // else launch::RaisedOnEveryRank; only a collective that timed out (gradcomm::Error,
  // kCommunication) is this rank's alone.
  Progress begin(std::size_t steps_per_epoch);
  // Whether the end of epoch `epochs_done` (counted from 1) saves; `last` is the last
  // epoch this process runs.
  bool due(int epochs_done, int last) const;
  // Collective: saves `progress`, then removes this rank's older shards. Throws as begin().
  void save(const Progress& progress);

 private:
  std::string prefix(int epoch) const;
  // This rank's shards in the directory, by epoch.
  std::vector<std::pair<int, std::filesystem::path>> local_shards() const;
  int newest_local_epoch() const;  // -1: none
  Progress resume(std::size_t steps_per_epoch);

  const Options& options_;
  gradcomm::Communicator& comm_;
  gradcomm::Exchanger* exchanger_;
  gradcomm::Compressor& compressor_;
  std::vector<Parameter>& params_;
  Optimizer& optimizer_;
  std::string settings_;
};

}  // namespace trainer
