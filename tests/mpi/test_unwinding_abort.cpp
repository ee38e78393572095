// A rank that throws while the others wait for it in a collective must end the job, not
// hang it: MpiCommunicator's destructor, reached by the unwinding exception, aborts the
// job instead of freeing the communicator or finalizing MPI (which would wait for them).
// Run by CTest in two ways:
// - as every MPI test (2, 3, 4 ranks): nobody throws past a communicator of several
//   ranks; the controls below must finish normally;
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
