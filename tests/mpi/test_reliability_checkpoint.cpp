// Checkpoint resume through save_checkpoint / load_checkpoint on 2, 3 and 4 ranks: train,
// save, go on; restore into fresh objects, go on; the parameters must be bitwise those of
// the uninterrupted run, for every compressor in the tree. And the collective failure
// paths: a bad shard on one rank, shards from two saves, a save failing on one rank, a
// compressor refusing its state on one rank, all end in an Error on every rank.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "gradcomm/checkpoint.h"
#include "gradcomm/dgc.h"
#include "gradcomm/gradcomm.h"
#include "gradcomm/onebit.h"
#include "gradcomm/quantize.h"
#include "mpi/mpi_test_util.h"

namespace gradcomm {
namespace {

using testing::all_ranks;
using testing::same_on_all_ranks;
namespace fs = std::filesystem;

std::vector<LayerSpec> model() {
  return {{"fc1.weight", 2400, 2}, {"fc1.bias", 40, 1}, {"fc2.weight", 401, 2}, {"fc2.bias", 10, 1}};
}

// One directory for the whole job: rank 0 makes it, every rank learns its name.
class SharedDir {
 public:
  SharedDir() {
    char name[256] = {};
    if (testing::world_rank() == 0) {
      std::string pattern = (fs::temp_directory_path() / "gradcomm-resume-XXXXXX").string();
      if (::mkdtemp(pattern.data())) std::snprintf(name, sizeof name, "%s", pattern.c_str());
    }
    MPI_Bcast(name, sizeof name, MPI_CHAR, 0, MPI_COMM_WORLD);
    path_ = name;
  }
  ~SharedDir() {
    MPI_Barrier(MPI_COMM_WORLD);
    if (testing::world_rank() == 0 && !path_.empty()) fs::remove_all(path_);
  }
  std::string operator/(const std::string& leaf) const { return path_ + "/" + leaf; }
  bool ok() const { return !path_.empty(); }

 private:
  std::string path_;
};

// A small least-squares problem per rank, so gradients depend on the parameters (a wrong
// restore changes every later step), trained with momentum SGD whose momentum buffer is
// optimizer state that the checkpoint must carry as a user blob.
struct Trainer {
  std::vector<LayerSpec> layers = model();
  std::vector<std::vector<float>> params, momentum, grads, updates;
  std::vector<TensorView> grad_views, update_views;
  int rank;

  explicit Trainer(int rank_) : rank(rank_) {
    for (const LayerSpec& l : layers) {
      params.emplace_back(l.numel);
      momentum.emplace_back(l.numel, 0.0f);
      grads.emplace_back(l.numel);
      updates.emplace_back(l.numel);
    }
    for (std::size_t l = 0; l < layers.size(); ++l) {
      for (std::size_t i = 0; i < params[l].size(); ++i) params[l][i] = std::cos(0.1f * static_cast<float>(i + l));
      grad_views.push_back(TensorView::of(std::span<float>(grads[l])));
      update_views.push_back(TensorView::of(std::span<float>(updates[l])));
    }
  }

  void step(Exchanger& ex, int step) {
    for (std::size_t l = 0; l < layers.size(); ++l) {
      for (std::size_t i = 0; i < params[l].size(); ++i) {
        const float target = std::sin(0.01f * static_cast<float>((i + 1) * (rank + 2)) + 0.3f * static_cast<float>(step));
        grads[l][i] = params[l][i] - target;
      }
    }
    ex.exchange(grad_views, update_views);
    for (std::size_t l = 0; l < layers.size(); ++l) {
      for (std::size_t i = 0; i < params[l].size(); ++i) {
        momentum[l][i] = 0.5f * momentum[l][i] + updates[l][i];
        params[l][i] -= 0.1f * momentum[l][i];
      }
    }
  }

  std::vector<CheckpointBlob> blobs() const {
    std::vector<CheckpointBlob> out;
    for (std::size_t l = 0; l < layers.size(); ++l) {
      out.push_back({"param/" + layers[l].name, std::as_bytes(std::span<const float>(params[l]))});
      out.push_back({"momentum/" + layers[l].name, std::as_bytes(std::span<const float>(momentum[l]))});
    }
    return out;
  }

  void restore(const CheckpointShard& shard) {
    for (std::size_t l = 0; l < layers.size(); ++l) {
      for (auto [prefix, dst] : {std::pair{"param/", &params[l]}, std::pair{"momentum/", &momentum[l]}}) {
        const auto bytes = shard.blob(prefix + layers[l].name);
        GRADCOMM_CHECK(bytes.size() == dst->size() * sizeof(float), ErrorCode::kCorruptPayload, "blob size");
        std::memcpy(dst->data(), bytes.data(), bytes.size());
      }
    }
  }

  std::vector<float> flat_params() const {
    std::vector<float> out;
    for (const auto& p : params) out.insert(out.end(), p.begin(), p.end());
    return out;
  }
};

struct Case {
  const char* name;
  std::function<std::unique_ptr<Compressor>()> make;
  bool stateful;  // its state changes the result: a run without it must differ
};

std::vector<Case> cases() {
  return {
      {"dense", [] { return std::make_unique<DenseCompressor>(); }, false},
      {"dense_fp16", [] { return std::make_unique<DenseCompressor>(DenseOptions{DType::kFloat16}); }, false},
      {"dgc",
       [] {
         DgcOptions o;
         o.density = 0.05;
         o.warmup_densities = {0.25, 0.1};
         o.steps_per_epoch = 2;  // the warm-up crosses the save point: the step must be restored
         o.dense_fallback = false;
         return std::make_unique<DgcCompressor>(o);
       },
       true},
      {"quantize_stochastic",
       [] {
         QuantizeOptions o;
         o.bits = 3;
         o.bucket_size = 64;
         o.rounding = Rounding::kStochastic;  // draws depend on the step
         o.seed = 11;
         return std::make_unique<QuantizeCompressor>(o);
       },
       true},
  };
}

class Resume : public ::testing::TestWithParam<Case> {};

TEST_P(Resume, RestoredRunIsBitwiseTheUninterruptedOne) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  SharedDir dir;
  ASSERT_TRUE(all_ranks(dir.ok()));
  const Case& c = GetParam();
  constexpr int kSaveAt = 5, kSteps = 10;
  const std::string prefix = dir / c.name;

  Trainer straight(comm.rank());
  Exchanger a(comm, c.make(), straight.layers);
  for (int s = 0; s < kSaveAt; ++s) straight.step(a, s);
  const auto blobs = straight.blobs();
  save_checkpoint(prefix, comm, a, blobs);
  for (int s = kSaveAt; s < kSteps; ++s) straight.step(a, s);

  // Fresh objects, parameters scrambled: everything must come from the checkpoint.
  Trainer resumed(comm.rank());
  for (auto& p : resumed.params) std::fill(p.begin(), p.end(), 123.0f);
  Exchanger b(comm, c.make(), resumed.layers);
  const CheckpointShard shard = load_checkpoint(prefix, comm, b);
  EXPECT_EQ(shard.step, kSaveAt);
  EXPECT_EQ(b.step(), kSaveAt);
  EXPECT_EQ(shard.rank, comm.rank());
  resumed.restore(shard);
  for (int s = kSaveAt; s < kSteps; ++s) resumed.step(b, s);

  const auto want = straight.flat_params();
  const auto got = resumed.flat_params();
  EXPECT_TRUE(all_ranks(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)) == 0))
      << c.name << ": resumed parameters differ from the uninterrupted run";
  EXPECT_TRUE(same_on_all_ranks(got)) << c.name;

  if (c.stateful) {
    // Control: the same resume with the compressor state left fresh must differ, or this
    // test could not notice a loader that drops the state.
    Trainer forgetful(comm.rank());
    Exchanger f(comm, c.make(), forgetful.layers);
    f.restore_step(kSaveAt);
    forgetful.restore(shard);
    for (int s = kSaveAt; s < kSteps; ++s) forgetful.step(f, s);
    const auto other = forgetful.flat_params();
    EXPECT_TRUE(all_ranks(std::memcmp(want.data(), other.data(), want.size() * sizeof(float)) != 0)) << c.name;
  }
}

INSTANTIATE_TEST_SUITE_P(Compressors, Resume, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return std::string(info.param.name); });

// 1-bit Adam keeps its state in the optimizer (momenta, frozen variance, every rank's own
// error-feedback buffers): it travels as a user blob next to the parameters. The save is
// after the freeze, so the compressed stage and its per-rank errors are in the state.
TEST(ResumeOptimizer, OneBitAdamThroughSaveCheckpointIsBitwise) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  SharedDir dir;
  ASSERT_TRUE(all_ranks(dir.ok()));
  const std::string prefix = dir / "onebit";
  const std::vector<std::size_t> sizes = {1000, 37, 256};
  constexpr int kSaveAt = 6, kSteps = 12;
  const OneBitAdamOptions options{.lr = 1e-2f, .freeze_step = 3};
  struct Run {
    std::vector<std::vector<float>> params, grads;
    std::vector<TensorView> grad_views;
    std::unique_ptr<OneBitAdam> adam;
    Run(MpiCommunicator& comm, const std::vector<std::size_t>& sizes, const OneBitAdamOptions& o) {
      std::vector<OneBitParam> specs;
      for (std::size_t i = 0; i < sizes.size(); ++i) {
        params.emplace_back(sizes[i], 0.5f);
        grads.emplace_back(sizes[i]);
      }
      for (std::size_t i = 0; i < sizes.size(); ++i) {
        specs.push_back({"p" + std::to_string(i), TensorView::of(std::span<float>(params[i])), true, {}});
        grad_views.push_back(TensorView::of(std::span<float>(grads[i])));
      }
      adam = std::make_unique<OneBitAdam>(comm, std::move(specs), o);
    }
    void step(int rank, int s) {
      for (std::size_t p = 0; p < params.size(); ++p) {
        for (std::size_t i = 0; i < params[p].size(); ++i) {
          grads[p][i] = params[p][i] - std::sin(0.05f * static_cast<float>(i * (rank + 1) + s));
        }
      }
      adam->step(grad_views);
    }
    std::vector<float> flat() const {
      std::vector<float> out;
      for (const auto& p : params) out.insert(out.end(), p.begin(), p.end());
      return out;
    }
  };
  DenseCompressor none;  // the gradients go through 1-bit Adam, not an Exchanger
  none.setup({}, comm.size(), comm.rank());

  Run straight(comm, sizes, options);
  for (int s = 0; s < kSaveAt; ++s) straight.step(comm.rank(), s);
  const std::vector<std::byte> adam_state = straight.adam->save_state();
  std::vector<CheckpointBlob> blobs = {{"onebit_adam", adam_state}};
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    blobs.push_back({"param" + std::to_string(i), std::as_bytes(std::span<const float>(straight.params[i]))});
  }
  save_checkpoint(prefix, comm, none, kSaveAt, blobs);
  for (int s = kSaveAt; s < kSteps; ++s) straight.step(comm.rank(), s);

  auto resume = [&](bool with_optimizer_state) {
    Run run(comm, sizes, options);
    const CheckpointShard shard = load_checkpoint(prefix, comm, none);
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      const auto bytes = shard.blob("param" + std::to_string(i));
      std::memcpy(run.params[i].data(), bytes.data(), bytes.size());
    }
    if (with_optimizer_state) run.adam->load_state(shard.blob("onebit_adam"));
    for (int s = static_cast<int>(shard.step); s < kSteps; ++s) run.step(comm.rank(), s);
    return run.flat();
  };
  const auto want = straight.flat();
  const auto got = resume(true);
  EXPECT_TRUE(all_ranks(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)) == 0));
  EXPECT_TRUE(same_on_all_ranks(got));
  const auto forgot = resume(false);
  EXPECT_TRUE(all_ranks(std::memcmp(want.data(), forgot.data(), want.size() * sizeof(float)) != 0))
      << "control: a resume without the optimizer state must differ";
}

// Runs `body` and returns the Error it threw (code kInternal with "no throw" if none).
template <typename Body>
Error error_of(Body&& body) {
  try {
    body();
  } catch (const Error& e) {
    return e;
  }
  return Error(ErrorCode::kInternal, "no throw");
}

class CheckpointCollective : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(all_ranks(dir.ok()));
    dense.setup(model(), comm.size(), comm.rank());
  }
  MpiCommunicator comm{MPI_COMM_WORLD};
  SharedDir dir;
  DenseCompressor dense;
};

TEST_F(CheckpointCollective, ABadShardOnOneRankFailsOnEveryRank) {
  const std::string prefix = dir / "bad";
  save_checkpoint(prefix, comm, dense, 3);
  EXPECT_EQ(load_checkpoint(prefix, comm, dense).step, 3);
  const int victim = comm.size() - 1;
  if (comm.rank() == victim) {
    // Flip one payload byte of this rank's shard.
    const std::string path = checkpoint_shard_path(prefix, victim);
    std::FILE* f = std::fopen(path.c_str(), "r+b");
    ASSERT_NE(f, nullptr);
    std::fseek(f, -1, SEEK_END);
    const int last = std::fgetc(f);
    std::fseek(f, -1, SEEK_END);
    std::fputc(last ^ 0x1, f);
    std::fclose(f);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  const Error e = error_of([&] { load_checkpoint(prefix, comm, dense); });
  EXPECT_EQ(e.code(), ErrorCode::kCorruptPayload) << e.what();
  const std::string needle = comm.rank() == victim ? "payload checksum mismatch" : "rank(s) " + std::to_string(victim) + " failed";
  EXPECT_NE(e.message().find(needle), std::string::npos) << e.what();
}

TEST_F(CheckpointCollective, ShardsOfTwoSavesAreRefusedOnEveryRank) {
  save_checkpoint(dir / "old", comm, dense, 1);
  save_checkpoint(dir / "new", comm, dense, 2);
  // As if a crash hit the new save after rank 0 renamed its shard and before the others did.
  if (comm.rank() != 0) fs::copy_file(checkpoint_shard_path(dir / "old", comm.rank()),
                                      checkpoint_shard_path(dir / "new", comm.rank()),
                                      fs::copy_options::overwrite_existing);
  MPI_Barrier(MPI_COMM_WORLD);
  const Error e = error_of([&] { load_checkpoint(dir / "new", comm, dense); });
  EXPECT_EQ(e.code(), ErrorCode::kCorruptPayload) << e.what();
  EXPECT_NE(e.message().find("different saves"), std::string::npos) << e.what();
}

TEST_F(CheckpointCollective, ASaveFailingOnOneRankFailsOnEveryRank) {
  // Rank 1 writes into a directory that does not exist.
  const std::string prefix = comm.rank() == 1 ? dir / "missing/dir/ckpt" : dir / "ckpt";
  const Error e = error_of([&] { save_checkpoint(prefix, comm, dense, 0); });
  EXPECT_EQ(e.code(), ErrorCode::kIo) << e.what();
  if (comm.rank() == 1) {
    EXPECT_NE(e.message().find("cannot create checkpoint temp file"), std::string::npos) << e.what();
  } else {
    EXPECT_NE(e.message().find("rank(s) 1 failed"), std::string::npos) << e.what();
  }
}

TEST_F(CheckpointCollective, StateRefusedOnOneRankRestoresEveryRanksPreviousState) {
  DgcOptions o;
  o.density = 0.05;
  o.warmup_densities = {};
  Trainer t(comm.rank());
  Exchanger ex(comm, std::make_unique<DgcCompressor>(o), t.layers);
  for (int s = 0; s < 3; ++s) t.step(ex, s);
  const std::string prefix = dir / "dgc";
  save_checkpoint(prefix, comm, ex);
  const auto saved = ex.compressor().save_state();
  for (int s = 3; s < 5; ++s) t.step(ex, s);
  const auto before = ex.compressor().save_state();
  ASSERT_NE(before, saved);
  if (comm.rank() == 0) {
    // Rewrite rank 0's shard with a valid header and checksum but a state blob DGC refuses.
    const CheckpointShard good = read_checkpoint_shard(checkpoint_shard_path(prefix, 0), {0, comm.size(), "dgc"});
    const std::string junk = "not a dgc state";
    ShardContents c{0, comm.size(), good.step, good.save_id, "dgc", std::as_bytes(std::span<const char>(junk)), {}};
    write_checkpoint_shard(checkpoint_shard_path(prefix, 0), c);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  const Error e = error_of([&] { load_checkpoint(prefix, comm, ex); });
  EXPECT_EQ(e.code(), ErrorCode::kCorruptPayload) << e.what();
  EXPECT_NE(e.message().find(comm.rank() == 0 ? "failed ranks: 0" : "rank(s) 0 failed"), std::string::npos)
      << e.what();
  EXPECT_EQ(ex.step(), 5);
  EXPECT_TRUE(all_ranks(ex.compressor().save_state() == before)) << "state not put back after a failed load";
}

}  // namespace
}  // namespace gradcomm
