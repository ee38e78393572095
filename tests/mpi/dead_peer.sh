#!/usr/bin/env bash
# CTest driver of the dead-peer test (tests/mpi/test_dead_peer.cpp) on 4 ranks, two cases:
#  1. rank 2 dies (SIGKILL) at step 5 of training. Open MPI's runtime sees the death and
#     ends the job; it names the dead rank and the signal.
#  2. rank 2 hangs (SIGSTOP) at step 5: the runtime sees nothing, so the other ranks'
#     watchdog (MpiCommunicatorOptions::collective_timeout, 3 s here) must throw an Error
#     naming the collective they wait in, and the trainer aborts the job.
# Each case passes only if the job ends within 60 s with a non-zero exit and that message.
#   dead_peer.sh MPIRUN BINARY [MPIRUN FLAGS...]
set -u
mpirun=$1
binary=$2
shift 2
limit=60

fail() { echo "dead_peer.sh: FAIL: $*" >&2; exit 1; }

run_case() {  # name signal timeout_ms pattern
  local name=$1 signal=$2 timeout_ms=$3 pattern=$4 start output rc elapsed
  shift 4  # the rest: mpirun flags
  start=$(date +%s)
  output=$(GRADCOMM_TEST_KILL_RANK=2 GRADCOMM_TEST_KILL_STEP=5 GRADCOMM_TEST_KILL_SIGNAL=$signal \
    GRADCOMM_TEST_TIMEOUT_MS=$timeout_ms timeout -k 5 "$limit" "$mpirun" -np 4 "$@" \
    -x GRADCOMM_TEST_KILL_RANK -x GRADCOMM_TEST_KILL_STEP -x GRADCOMM_TEST_KILL_SIGNAL -x GRADCOMM_TEST_TIMEOUT_MS \
    "$binary" --gtest_filter='DeadPeer.*' 2>&1)
  rc=$?
  elapsed=$(( $(date +%s) - start ))
  printf '%s\n' "$output" | grep -v "PMIX ERROR" | tail -40
  echo "dead_peer.sh [$name]: exit $rc after ${elapsed}s"
  [[ $rc -ne 124 && $rc -ne 137 ]] || [[ $elapsed -lt $limit ]] || fail "[$name] ranks still alive after ${limit}s"
  [[ $rc -ne 0 ]] || fail "[$name] the job exited 0 although rank 2 stopped"
  grep -q "rank 2 kills itself at step 5" <<<"$output" || fail "[$name] rank 2 never reached the kill step"
  grep -Eq "$pattern" <<<"$output" || fail "[$name] no message matching: $pattern"
  echo "dead_peer.sh [$name]: PASS"
}

run_case died 9 0 "rank 2 .* exited on signal 9" "$@"
run_case hung 19 3000 "(allreduce|allgather)[a-z]* of [0-9]+ elements on rank [013] did not complete within" "$@"
