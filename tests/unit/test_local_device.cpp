// local_rank_from_environment and local_cuda_device: which device a rank takes, from the
// launcher's variables.
#include <gtest/gtest.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "gradcomm/error.h"
#include "gradcomm/local_device.h"

namespace gradcomm {
namespace {

// Sets the launcher variables for one test and restores the process's afterwards.
class LocalRankEnvironment : public ::testing::Test {
 protected:
  static constexpr const char* kNames[] = {
      "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"};
  void SetUp() override {
    for (const char* name : kNames) {
      const char* value = std::getenv(name);
      saved_.push_back(value ? std::optional<std::string>(value) : std::nullopt);
      unsetenv(name);
    }
  }
  void TearDown() override {
    for (std::size_t i = 0; i < std::size(kNames); ++i) {
      if (saved_[i]) {
        setenv(kNames[i], saved_[i]->c_str(), 1);
      } else {
        unsetenv(kNames[i]);
      }
    }
  }
  std::vector<std::optional<std::string>> saved_;
};

TEST_F(LocalRankEnvironment, NoneSetMeansRankZero) {
  const LocalRank local = local_rank_from_environment();
  EXPECT_EQ(local.rank, 0);
  EXPECT_EQ(local.size, 0);
  EXPECT_EQ(local.source, "none");
}

TEST_F(LocalRankEnvironment, OpenMpiFirstThenTorchrun) {
  setenv("LOCAL_RANK", "1", 1);
  setenv("LOCAL_WORLD_SIZE", "2", 1);
  LocalRank local = local_rank_from_environment();
  EXPECT_EQ(local.rank, 1);
  EXPECT_EQ(local.size, 2);
  EXPECT_EQ(local.source, "LOCAL_RANK");
  setenv("OMPI_COMM_WORLD_LOCAL_RANK", "3", 1);
  setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "4", 1);
  local = local_rank_from_environment();
  EXPECT_EQ(local.rank, 3);
  EXPECT_EQ(local.size, 4);
  EXPECT_EQ(local.source, "OMPI_COMM_WORLD_LOCAL_RANK");
}

TEST_F(LocalRankEnvironment, BadValuesNameTheVariable) {
  for (const char* bad : {"", "x", "-1", "2a", "99999999999"}) {
    setenv("LOCAL_RANK", bad, 1);
    try {
      local_rank_from_environment();
      ADD_FAILURE() << "LOCAL_RANK='" << bad << "' accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(e.message().find("LOCAL_RANK='" + std::string(bad) + "'"), std::string::npos)
          << e.what();
    }
  }
  setenv("LOCAL_RANK", "2", 1);
  setenv("LOCAL_WORLD_SIZE", "2", 1);
  EXPECT_THROW(local_rank_from_environment(), Error);  // rank not below size
}

TEST(LocalDevice, DescribeSaysWhereTheDeviceCameFrom) {
  LocalDevice d{.device = 1,
                .device_count = 2,
                .local = {.rank = 3, .size = 4, .source = "OMPI_COMM_WORLD_LOCAL_RANK"}};
  EXPECT_EQ(d.describe(),
            "cuda:1 (local rank 3 of 4, from OMPI_COMM_WORLD_LOCAL_RANK; 2 devices); 4 local ranks "
            "share 2 devices, "
            "which NCCL refuses");
  d = {.device = 0, .device_count = 1, .local = {.rank = 0, .size = 0, .source = "none"}};
  EXPECT_EQ(d.describe(), "cuda:0 (local rank 0, no local rank in the environment; 1 device)");
}

#if !defined(GRADCOMM_HAVE_CUDA)
TEST_F(LocalRankEnvironment, CudaDeviceNeedsACudaBuild) {
  setenv("LOCAL_RANK", "1", 1);
  try {
    local_cuda_device();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(e.message().find("local rank 1 from LOCAL_RANK"), std::string::npos) << e.what();
  }
}
#endif

}  // namespace
}  // namespace gradcomm
