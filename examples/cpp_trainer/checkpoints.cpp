#include "checkpoints.h"

#include <gradcomm/checkpoint.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <sstream>
#include <stdexcept>

namespace trainer {

void StateWriter::u64(std::uint64_t value) {
  const auto* p = reinterpret_cast<const std::byte*>(&value);
  out_.insert(out_.end(), p, p + sizeof value);
}

void StateWriter::floats(std::span<const float> values) {
  u64(values.size());
  const auto bytes = std::as_bytes(values);
  out_.insert(out_.end(), bytes.begin(), bytes.end());
}

void StateReader::take(void* dst, std::size_t bytes, const std::string& field) {
  if (bytes > in_.size() - at_) {
    throw std::runtime_error(what_ + ": " + std::to_string(in_.size()) + " bytes end at " + std::to_string(at_) +
                             " reading " + field);
  }
  if (bytes) std::memcpy(dst, in_.data() + at_, bytes);
  at_ += bytes;
}

std::uint64_t StateReader::u64(const std::string& field) {
  std::uint64_t value = 0;
  take(&value, sizeof value, field);
  return value;
}

void StateReader::floats(std::span<float> into, const std::string& field) {
  const std::uint64_t n = u64(field + "'s length");
  if (n != into.size()) {
    throw std::runtime_error(what_ + ": " + field + " has " + std::to_string(n) + " elements in the checkpoint, " +
                             std::to_string(into.size()) + " in this run");
  }
  take(into.data(), into.size_bytes(), field);
}

void StateReader::finish() const {
  if (at_ != in_.size()) throw std::runtime_error(what_ + ": " + std::to_string(in_.size() - at_) + " trailing bytes");
}

void save_tensors(StateWriter& w, const std::vector<std::vector<float>>& tensors) {
  w.u64(tensors.size());
  for (const std::vector<float>& t : tensors) w.floats(t);
}

void load_tensors(StateReader& r, std::vector<std::vector<float>>& tensors, const std::vector<Parameter>& params,
                  const std::string& field) {
  const std::uint64_t n = r.u64(field + " count");
  if (n != 0 && n != params.size()) {
    throw std::runtime_error(field + ": " + std::to_string(n) + " tensors in the checkpoint, " +
                             std::to_string(params.size()) + " parameters in this run");
  }
  tensors.assign(n, {});
  for (std::size_t k = 0; k < n; ++k) {
    tensors[k].resize(params[k].value->size());
    r.floats(tensors[k], field + " of " + params[k].name);
  }
}

namespace {

constexpr const char* kSettings = "trainer.settings";
constexpr const char* kProgress = "trainer.progress";
constexpr const char* kParameters = "trainer.parameters";
constexpr const char* kOptimizer = "trainer.optimizer";

std::string number(double x) {
  char buf[64];
  const auto end = std::to_chars(buf, buf + sizeof buf, x).ptr;  // shortest exact form
  return std::string(buf, end);
}

// "flag value" lines of every option the run's trajectory depends on. --epochs is not one
// (a resumed run may go on longer) except for onebit-adam, whose freeze step is a fraction
// of all steps.
std::string resume_settings(const Options& o) {
  std::string s, hidden;
  const auto add = [&s](const char* flag, const std::string& value) {
    s.append(flag).append(" ").append(value).append("\n");
  };
  for (std::size_t w : o.hidden) hidden.append(hidden.empty() ? "" : ",").append(std::to_string(w));
  add("--model", o.model);
  add("--hidden", hidden);
  add("--compressor", o.compressor);
  add("--optimizer", o.optimizer);
  add("--density", number(o.density));
  add("--bits", std::to_string(o.bits));
  add("--seed", std::to_string(o.seed));
  add("--lr", o.lr < 0 ? std::string("default") : number(o.lr));  // < 0: the optimizer's default
  add("--batch", std::to_string(o.batch));
  add("--momentum", number(o.momentum));
  add("--weight-decay", number(o.weight_decay));
  add("--fp16-wire", o.fp16_wire ? "1" : "0");
  add("--nonfinite", o.nonfinite);
  // Only when set: checkpoints from before these flags resume as they were.
  if (o.exchange != "compressor") add("--exchange", o.exchange);
  if (o.hierarchy != "flat") add("--hierarchy", o.hierarchy);
  if (o.optimizer == "onebit-adam") {
    add("--epochs", std::to_string(o.epochs));
    add("--freeze-fraction", number(o.freeze_fraction));
    add("--onebit-precondition", o.onebit_precondition ? "1" : "0");
    add("--onebit-eps", number(o.onebit_eps));
  }
  return s;
}

std::map<std::string, std::string> parse_settings(const std::string& text) {
  std::map<std::string, std::string> flags;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    const std::size_t space = line.find(' ');
    flags[line.substr(0, space)] = space == std::string::npos ? "" : line.substr(space + 1);
  }
  return flags;
}

// Throws naming every option that differs between the checkpoint and this run.
void check_settings(std::span<const std::byte> saved_blob, const std::string& now) {
  const std::string saved(reinterpret_cast<const char*>(saved_blob.data()), saved_blob.size());
  if (saved == now) return;
  const auto before = parse_settings(saved), after = parse_settings(now);
  std::string diff;
  for (const auto& [flag, value] : after) {
    const auto it = before.find(flag);
    const std::string was = it == before.end() ? "(not set)" : it->second;
    if (was != value) diff += (diff.empty() ? "" : ", ") + flag + " " + was + " there, " + value + " here";
  }
  for (const auto& [flag, value] : before) {
    if (!after.count(flag)) diff += (diff.empty() ? "" : ", ") + flag + " " + value + " there, not set here";
  }
  throw std::runtime_error("the checkpoint was saved with other settings (" + diff +
                           "); resume with the settings it was saved with");
}

std::vector<std::int32_t> gather(gradcomm::Communicator& comm, std::int32_t value) {
  std::vector<std::int32_t> all(static_cast<std::size_t>(comm.size()));
  comm.allgather(gradcomm::TensorView::of(std::span<std::int32_t>(&value, 1)),
                 gradcomm::TensorView::of(std::span<std::int32_t>(all)))
      ->wait();
  return all;
}

// Throws on every rank when `error` is set on any: the ranks agree first, so that a local
// failure never leaves the others waiting in the next collective.
void fail_together(gradcomm::Communicator& comm, const std::string& error, const std::string& what) {
  const std::vector<std::int32_t> failed = gather(comm, error.empty() ? 0 : 1);
  std::string ranks;
  for (std::size_t r = 0; r < failed.size(); ++r) {
    if (failed[r]) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
  }
  if (ranks.empty()) return;
  const std::string me = "rank " + std::to_string(comm.rank());
  if (!error.empty()) throw std::runtime_error(what + " failed on " + me + ": " + error);
  throw std::runtime_error(what + ": " + me + " succeeded, but rank(s) " + ranks + " failed (their messages say why)");
}

// What the library appends to a checkpoint's prefix for `rank`'s shard: ".rank<r>.ckpt".
std::string shard_suffix(int rank) {
  const std::string prefix = "x";
  return gradcomm::checkpoint_shard_path(prefix, rank).substr(prefix.size());
}

// The epoch of `name` when it is one of this rank's shards ("epoch-N" + suffix), else -1.
int shard_epoch(const std::string& name, const std::string& suffix) {
  const std::string head = "epoch-";
  if (name.size() <= head.size() + suffix.size() || name.compare(0, head.size(), head) != 0 ||
      name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) {
    return -1;
  }
  const std::string digits = name.substr(head.size(), name.size() - head.size() - suffix.size());
  int epoch = -1;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), epoch);
  return ec == std::errc() && end == digits.data() + digits.size() ? epoch : -1;
}

}  // namespace

TrainerCheckpoints::TrainerCheckpoints(const Options& options, gradcomm::Communicator& comm,
                                       gradcomm::Exchanger* exchanger, gradcomm::Compressor& compressor,
                                       std::vector<Parameter>& params, Optimizer& optimizer)
    : options_(options),
      comm_(comm),
      exchanger_(exchanger),
      compressor_(compressor),
      params_(params),
      optimizer_(optimizer),
      settings_(resume_settings(options)) {}

std::string TrainerCheckpoints::prefix(int epoch) const {
  char name[32];
  std::snprintf(name, sizeof name, "epoch-%06d", epoch);
  return (std::filesystem::path(options_.checkpoint_dir) / name).string();
}

std::vector<std::pair<int, std::filesystem::path>> TrainerCheckpoints::local_shards() const {
  const std::string suffix = shard_suffix(comm_.rank());
  std::vector<std::pair<int, std::filesystem::path>> shards;
  std::error_code ec;  // no directory: no shards
  for (const auto& entry : std::filesystem::directory_iterator(options_.checkpoint_dir, ec)) {
    const int epoch = shard_epoch(entry.path().filename().string(), suffix);
    if (epoch >= 0) shards.emplace_back(epoch, entry.path());
  }
  return shards;
}

int TrainerCheckpoints::newest_local_epoch() const {
  int newest = -1;
  for (const auto& shard : local_shards()) newest = std::max(newest, shard.first);
  return newest;
}

bool TrainerCheckpoints::due(int epochs_done, int last) const {
  return !options_.checkpoint_dir.empty() && (epochs_done % options_.checkpoint_every_epochs == 0 || epochs_done == last);
}

Progress TrainerCheckpoints::begin(std::size_t steps_per_epoch) {
  if (options_.checkpoint_dir.empty()) return {};
  if (options_.resume) return resume(steps_per_epoch);
  std::error_code ec;
  std::filesystem::create_directories(options_.checkpoint_dir, ec);
  fail_together(comm_, ec ? "cannot create " + options_.checkpoint_dir + ": " + ec.message() : "",
                "--checkpoint-dir");
  const std::vector<std::int32_t> newest = gather(comm_, newest_local_epoch());
  const std::int32_t found = *std::max_element(newest.begin(), newest.end());
  if (found >= 0) {
    throw std::invalid_argument("--checkpoint-dir " + options_.checkpoint_dir + " already holds a checkpoint (" +
                                prefix(found) + "); continue it with --resume, or choose another directory");
  }
  return {};
}

Progress TrainerCheckpoints::resume(std::size_t steps_per_epoch) {
  const std::vector<std::int32_t> newest = gather(comm_, newest_local_epoch());
  const auto [lo, hi] = std::minmax_element(newest.begin(), newest.end());
  if (*hi < 0) {
    throw std::invalid_argument("--resume: no checkpoint in " + options_.checkpoint_dir + " (no epoch-N" +
                                shard_suffix(0) + " there)");
  }
  // A save cut short between ranks leaves its shards on some ranks only, next to the
  // previous save's, which are removed only once a save has completed on every rank: the
  // newest save that every rank has is the newest complete one. When some rank has none at
  // all (another number of ranks), load the newest anyway: load_checkpoint says on every
  // rank which shard is missing or from which world size.
  const int epoch = *lo >= 0 ? *lo : *hi;
  const std::string from = prefix(epoch);
  const gradcomm::CheckpointShard shard = exchanger_ ? gradcomm::load_checkpoint(from, comm_, *exchanger_)
                                                     : gradcomm::load_checkpoint(from, comm_, compressor_);
  Progress progress;
  std::string error;
  try {
    check_settings(shard.blob(kSettings), settings_);
    StateReader r(shard.blob(kProgress), kProgress);
    progress.epochs_done = static_cast<int>(r.u64("epochs"));
    progress.step = static_cast<std::int64_t>(r.u64("step"));
    progress.total_bytes = r.u64("bytes");
    r.finish();
    if (progress.epochs_done != epoch || progress.step != shard.step ||
        progress.step != static_cast<std::int64_t>(steps_per_epoch) * epoch) {
      throw std::runtime_error("the checkpoint is of epoch " + std::to_string(progress.epochs_done) + " step " +
                               std::to_string(progress.step) + " (header step " + std::to_string(shard.step) +
                               "), not the end of epoch " + std::to_string(epoch) + " at " +
                               std::to_string(steps_per_epoch) + " steps per epoch");
    }
    StateReader p(shard.blob(kParameters), kParameters);
    if (p.u64("count") != params_.size()) throw std::runtime_error("the checkpoint has another number of parameters");
    for (Parameter& prm : params_) p.floats(*prm.value, prm.name);
    p.finish();
    optimizer_.load_state(shard.blob(kOptimizer), params_);
  } catch (const std::exception& e) {
    error = e.what();
  }
  fail_together(comm_, error.empty() ? error : error + " (" + from + ")", "--resume");
  return progress;
}

void TrainerCheckpoints::save(const Progress& progress) {
  StateWriter counters, params;
  counters.u64(static_cast<std::uint64_t>(progress.epochs_done));
  counters.u64(static_cast<std::uint64_t>(progress.step));
  counters.u64(progress.total_bytes);
  params.u64(params_.size());
  for (const Parameter& prm : params_) params.floats(*prm.value);
  const std::vector<std::byte> optimizer = optimizer_.save_state();
  const gradcomm::CheckpointBlob blobs[] = {
      {kSettings, std::as_bytes(std::span<const char>(settings_))},
      {kProgress, counters.bytes()},
      {kParameters, params.bytes()},
      {kOptimizer, optimizer},
  };
  const std::string to = prefix(progress.epochs_done);
  if (exchanger_) {
    gradcomm::save_checkpoint(to, comm_, *exchanger_, blobs);
  } else {
    gradcomm::save_checkpoint(to, comm_, compressor_, progress.step, blobs);
  }
  // Every rank's shard of this save is on disk (save_checkpoint agreed on it): this rank's
  // older shards are no longer needed.
  for (const auto& [epoch, path] : local_shards()) {
    std::error_code ec;
    if (epoch != progress.epochs_done && !std::filesystem::remove(path, ec) && ec) {
      std::fprintf(stderr, "gradcomm-train: warning: cannot remove the old shard %s: %s\n", path.c_str(),
                   ec.message().c_str());
    }
  }
}

}  // namespace trainer
