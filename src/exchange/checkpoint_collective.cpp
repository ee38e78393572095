// save_checkpoint / load_checkpoint: the collective halves. Every rank takes the same
// collective path whatever happens locally, so a failure on one rank becomes an Error on
// every rank instead of a hang at the next collective.
#include <algorithm>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "gradcomm/checkpoint.h"
#include "gradcomm/communicator.h"
#include "gradcomm/compressor.h"
#include "gradcomm/exchanger.h"

namespace gradcomm {
namespace {

// The Exchanger's plan and sparse allreduce regions (Exchanger::save_exchange_state).
constexpr const char* kExchangeSection = "gradcomm.exchange";

// What each rank tells the others after its local part.
struct Report {
  bool ok = true;
  ErrorCode code = ErrorCode::kInternal;
  std::int64_t step = 0;
  std::uint64_t save_id = 0;
};

std::vector<Report> gather_reports(Communicator& comm, const Report& mine) {
  const auto u64 = [](std::uint64_t v, std::uint32_t* w) {
    w[0] = static_cast<std::uint32_t>(v);
    w[1] = static_cast<std::uint32_t>(v >> 32);
  };
  std::vector<std::uint32_t> local(6), all(6 * static_cast<std::size_t>(comm.size()));
  local[0] = mine.ok ? 1u : 0u;
  local[1] = static_cast<std::uint32_t>(mine.code);
  u64(static_cast<std::uint64_t>(mine.step), &local[2]);
  u64(mine.save_id, &local[4]);
  comm.allgather(TensorView::of(std::span<std::uint32_t>(local)), TensorView::of(std::span<std::uint32_t>(all)))
      ->wait();
  std::vector<Report> reports(static_cast<std::size_t>(comm.size()));
  for (std::size_t r = 0; r < reports.size(); ++r) {
    const std::uint32_t* w = &all[6 * r];
    reports[r].ok = w[0] != 0;
    reports[r].code = static_cast<ErrorCode>(w[1]);
    reports[r].step = static_cast<std::int64_t>((std::uint64_t{w[3]} << 32) | w[2]);
    reports[r].save_id = (std::uint64_t{w[5]} << 32) | w[4];
  }
  return reports;
}

// Throws on every rank when any rank failed: this rank's own error if it failed, else one
// naming the ranks that did.
void throw_if_any_failed(const std::vector<Report>& reports, int rank, const Error* local,
                         const std::string& what) {
  std::string failed;
  const Report* first = nullptr;
  for (std::size_t r = 0; r < reports.size(); ++r) {
    if (reports[r].ok) continue;
    failed += (failed.empty() ? "" : ", ") + std::to_string(r);
    if (!first) first = &reports[r];
  }
  if (!first) return;
  if (local) {
    throw Error(local->code(), what + " failed on rank " + std::to_string(rank) + " (failed ranks: " +
                                   failed + "): " + local->message(),
                local->where());
  }
  GRADCOMM_THROW(first->code, what, ": rank ", rank, " succeeded, but rank(s) ", failed, " failed (",
                 error_code_name(first->code), "; their own messages say why)");
}

template <typename Body>
std::optional<Error> run_locally(Body&& body) {
  try {
    body();
  } catch (const Error& e) {
    return e;
  } catch (const std::exception& e) {
    return Error(ErrorCode::kInternal, e.what());
  }
  return std::nullopt;
}

CheckpointShard load_impl(const std::string& prefix, Communicator& comm, Compressor& compressor,
                          Exchanger* exchanger) {
  const std::string what = "load_checkpoint(" + prefix + ")";
  CheckpointShard shard;
  std::optional<Error> error = run_locally([&] {
    shard = read_checkpoint_shard(checkpoint_shard_path(prefix, comm.rank()),
                                  {comm.rank(), comm.size(), compressor.name()});
  });
  Report mine{!error, error ? error->code() : ErrorCode::kInternal, shard.step, shard.save_id};
  std::vector<Report> reports = gather_reports(comm, mine);
  throw_if_any_failed(reports, comm.rank(), error ? &*error : nullptr, what);
  for (std::size_t r = 1; r < reports.size(); ++r) {
    GRADCOMM_CHECK(reports[r].step == reports[0].step && reports[r].save_id == reports[0].save_id,
                   ErrorCode::kCorruptPayload, what, " on rank ", comm.rank(),
                   ": the shards come from different saves (rank 0: step ", reports[0].step, ", save id ",
                   reports[0].save_id, "; rank ", r, ": step ", reports[r].step, ", save id ",
                   reports[r].save_id, "); a save was interrupted between ranks: use an older checkpoint");
  }

  // Every shard is valid and from one save: now change state, all or nothing.
  const std::vector<std::byte> previous = compressor.save_state();
  const std::int64_t previous_step = exchanger ? exchanger->step() : 0;
  const std::vector<std::byte> previous_exchange = exchanger ? exchanger->save_exchange_state() : std::vector<std::byte>{};
  error = run_locally([&] {
    compressor.load_state(shard.compressor_state());
    if (exchanger) exchanger->restore_step(shard.step);
    // Checkpoints from before the exchange state existed have none: the plan stays as built.
    if (exchanger && shard.has(kExchangeSection)) exchanger->load_exchange_state(shard.blob(kExchangeSection));
  });
  mine = {!error, error ? error->code() : ErrorCode::kInternal, shard.step, shard.save_id};
  reports = gather_reports(comm, mine);
  const bool all_ok = std::all_of(reports.begin(), reports.end(), [](const Report& r) { return r.ok; });
  if (!all_ok) {
    compressor.load_state(previous);
    if (exchanger && !error) exchanger->restore_step(previous_step);
    if (exchanger) exchanger->load_exchange_state(previous_exchange);
    throw_if_any_failed(reports, comm.rank(), error ? &*error : nullptr, what);
  }
  return shard;
}

void save_impl(const std::string& prefix, Communicator& comm, const Compressor& compressor,
               std::int64_t step, std::span<const CheckpointBlob> blobs) {
  // One id for all shards of this save, so a loader can tell a set mixed from two saves.
  std::vector<std::uint32_t> id(2);
  if (comm.rank() == 0) {
    std::random_device entropy;
    id[0] = entropy();
    id[1] = entropy();
  }
  comm.broadcast(TensorView::of(std::span<std::uint32_t>(id)), 0)->wait();
  const std::uint64_t save_id = (std::uint64_t{id[1]} << 32) | id[0];
  const std::optional<Error> error = run_locally([&] {
    const std::vector<std::byte> state = compressor.save_state();
    ShardContents contents;
    contents.rank = comm.rank();
    contents.world_size = comm.size();
    contents.step = step;
    contents.save_id = save_id;
    contents.compressor = compressor.name();
    contents.compressor_state = state;
    contents.blobs = blobs;
    write_checkpoint_shard(checkpoint_shard_path(prefix, comm.rank()), contents);
  });
  const Report mine{!error, error ? error->code() : ErrorCode::kInternal, step, save_id};
  throw_if_any_failed(gather_reports(comm, mine), comm.rank(), error ? &*error : nullptr,
                      "save_checkpoint(" + prefix + ")");
}

}  // namespace

void save_checkpoint(const std::string& prefix, Communicator& comm, const Compressor& compressor,
                     std::int64_t step, std::span<const CheckpointBlob> blobs) {
  save_impl(prefix, comm, compressor, step, blobs);
}

void save_checkpoint(const std::string& prefix, Communicator& comm, const Exchanger& exchanger,
                     std::span<const CheckpointBlob> blobs) {
  const std::vector<std::byte> state = exchanger.save_exchange_state();
  std::vector<CheckpointBlob> all(blobs.begin(), blobs.end());
  all.push_back({kExchangeSection, state});
  save_impl(prefix, comm, exchanger.compressor(), exchanger.step(), all);
}

CheckpointShard load_checkpoint(const std::string& prefix, Communicator& comm, Compressor& compressor) {
  return load_impl(prefix, comm, compressor, nullptr);
}

CheckpointShard load_checkpoint(const std::string& prefix, Communicator& comm, Exchanger& exchanger) {
  return load_impl(prefix, comm, exchanger.compressor(), &exchanger);
}

}  // namespace gradcomm
