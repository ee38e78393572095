// main() for the multi-rank GoogleTest binaries: every rank runs every test; only rank
// 0 prints the usual listener output, and the exit code says whether any rank failed.
#include <gtest/gtest.h>
#include <mpi.h>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    // Other ranks report only failures, prefixed by the rank (in the failure messages).
    delete listeners.Release(listeners.default_result_printer());
  }
  const int local = RUN_ALL_TESTS();
  int global = 0;
  MPI_Allreduce(&local, &global, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (global != 0 && local == 0 && rank == 0) std::fprintf(stderr, "another rank failed\n");
  MPI_Finalize();
  return global;
}
