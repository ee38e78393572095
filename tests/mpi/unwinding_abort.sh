#!/usr/bin/env bash
# CTest driver of tests/mpi/test_unwinding_abort.cpp: one rank throws before the setup
# agreement while the others wait in it. The job must end within the limit (after the
# communicator's teardown_grace, 5 s), non-zero, with the throwing rank's message naming
# itself and its reason. Cases: the first rank and the last rank of 3, and a middle rank
# of 4.
#   unwinding_abort.sh MPIRUN BINARY [MPIRUN FLAGS...]
set -u
mpirun=$1
binary=$2
shift 2
limit=60

fail() { echo "unwinding_abort.sh: FAIL: $*" >&2; exit 1; }

run_case() {  # np rank
  local np=$1 rank=$2 start output rc elapsed
  shift 2
  start=$(date +%s)
  output=$(GRADCOMM_TEST_THROW_RANK=$rank timeout -k 5 "$limit" "$mpirun" -np "$np" "$@" -x GRADCOMM_TEST_THROW_RANK \
    "$binary" --gtest_filter='UnwindingAbort.ARankThatThrows*' 2>&1)
  rc=$?
  elapsed=$(( $(date +%s) - start ))
  printf '%s\n' "$output" | grep -v -e "PMIX ERROR" -e "ORTE_ERROR_LOG" | tail -15
  echo "unwinding_abort.sh [rank $rank of $np]: exit $rc after ${elapsed}s"
  [[ $rc -ne 124 && $rc -ne 137 ]] || fail "[rank $rank of $np] ranks still alive after ${limit}s"
  [[ $rc -ne 0 ]] || fail "[rank $rank of $np] the job exited 0"
  grep -q "gradcomm: rank $rank of $np: an exception is unwinding past MpiCommunicator (the last gradcomm error on this thread: gradcomm: invalid argument: rank $rank refuses its setting --density 0" <<<"$output" ||
    fail "[rank $rank of $np] no message naming the rank and its reason"
  echo "unwinding_abort.sh [rank $rank of $np]: PASS"
}

run_case 3 0 "$@"
run_case 3 2 "$@"
run_case 4 1 "$@"
