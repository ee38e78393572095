// An exception unwinding past MpiCommunicator: when one rank fails alone while the others
// wait for it in a collective, the job must end, not hang (the destructor aborts it after
// teardown_grace instead of freeing the communicator or finalizing MPI); when every rank
// fails alike, each must reach its own handler. Run by CTest in two ways:
// - as every MPI test (2, 3, 4 ranks): the shared failure and the controls;
// - by tests/mpi/unwinding_abort.sh with GRADCOMM_TEST_THROW_RANK set: that rank throws
//   before the setup agreement, and the script checks that the job ends non-zero within
//   the time limit with the rank and the reason in the output.
#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <vector>

#include "gradcomm/gradcomm.h"
#include "mpi/mpi_test_util.h"

namespace gradcomm {
namespace {

int throw_rank() {
  const char* value = std::getenv("GRADCOMM_TEST_THROW_RANK");
  return value ? std::atoi(value) : -1;
}

// What a trainer's setup does: a setting refused on one rank only, then the agreement.
void setup_and_one_step() {
  MpiCommunicator comm(MPI_COMM_WORLD);
  if (comm.rank() == throw_rank()) {
    GRADCOMM_THROW(ErrorCode::kInvalidArgument, "rank ", comm.rank(),
                   " refuses its setting --density 0");
  }
  const std::vector<LayerSpec> layers = {{"fc.weight", 1000, 2}, {"fc.bias", 10, 1}};
  Exchanger ex(comm, std::make_shared<DenseCompressor>(), layers);  // the others wait here
  std::vector<float> w(1000, 1.0f), b(10, 1.0f);
  const TensorView views[] = {TensorView::of(std::span<float>(w)),
                              TensorView::of(std::span<float>(b))};
  ex.exchange(views, views);
  EXPECT_EQ(w[0], 1.0f);
}

TEST(UnwindingAbort, ARankThatThrowsBeforeTheAgreementEndsTheJob) {
  if (throw_rank() < 0) {
    setup_and_one_step();  // the control: nobody throws
    return;
  }
  try {
    setup_and_one_step();
  } catch (const Error& e) {
    // Reached only if the destructor did not abort.
    ADD_FAILURE() << "rank " << testing::world_rank()
                  << " came back from the unwinding: " << e.what();
  }
}

// A failure every rank shares (a setting they all refuse): they all come to the
// communicator's teardown, so it is freed as usual and every rank's handler runs.
TEST(UnwindingAbort, AFailureEveryRankSharesEndsInEveryHandler) {
  bool caught = false;
  try {
    MpiCommunicator comm(MPI_COMM_WORLD);
    GRADCOMM_THROW(ErrorCode::kInvalidArgument, "every rank refuses this setting");
  } catch (const Error& e) {
    caught = e.message() == "every rank refuses this setting";
  }
  EXPECT_TRUE(caught);
  EXPECT_TRUE(testing::all_ranks(caught));  // and MPI still works
}

// An exception caught inside the communicator's scope does not abort anything, nor does
// one that unwinds past a communicator of one rank (no peer can be waiting on it).
TEST(UnwindingAbort, CaughtInsideTheScopeOrAloneDoesNotAbort) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  try {
    GRADCOMM_THROW(ErrorCode::kInvalidArgument, "caught at once");
  } catch (const Error&) {
  }
  try {
    std::unique_ptr<Communicator> alone = comm.split(comm.rank(), 0);
    ASSERT_EQ(alone->size(), 1);
    throw std::runtime_error("unwinds past a communicator of one rank");
  } catch (const std::runtime_error&) {
  }
  comm.barrier()->wait();  // every rank is still here
}

}  // namespace
}  // namespace gradcomm
