#!/usr/bin/env bash
# CTest driver of the dead-peer test (tests/mpi/test_dead_peer.cpp) on 4 ranks, three cases:
#  1. rank 2 dies (SIGKILL) at step 5 of training. Open MPI's runtime sees the death and
#     ends the job before the survivors notice; it names the dead rank and the signal.
#  2. the same death under `mpirun --enable-recovery`, where the runtime leaves the
#     survivors running (as launchers without Open MPI's error manager do): their watchdog
#     (MpiCommunicatorOptions::collective_timeout, 3 s here) must throw an Error naming
#     the collective they wait in, and the test aborts the job.
#  3. rank 2 hangs (SIGSTOP) at step 5: the runtime sees nothing; the watchdog again.
# Each case passes only if the job ends within 60 s with a non-zero exit and that message.
#   dead_peer.sh MPIRUN BINARY [MPIRUN FLAGS...]
set -u
mpirun=$1
binary=$2
shift 2
limit=60

fail() { echo "dead_peer.sh: FAIL: $*" >&2; exit 1; }

# Under --enable-recovery mpirun exits 0 whatever its ranks do, so in that case every rank
# runs inside a shell that reports the rank's own exit status, and those are checked. The
# first survivor whose watchdog fires aborts the job, and the runtime then kills the others
# (shell included, so they report nothing): a killed rank has ended non-zero too. What
# must hold: no rank reports 0, at least one survivor reports its own non-zero exit, and
# the job is over (mpirun returned) within the limit.
run_case() {  # name signal timeout_ms pattern [--per-rank-status] [mpirun flags...]
  local name=$1 signal=$2 timeout_ms=$3 pattern=$4 start output rc elapsed per_rank=0 r
  shift 4
  if [[ ${1:-} == --per-rank-status ]]; then per_rank=1; shift; fi
  local command=("$binary" --gtest_filter='DeadPeer.*')
  ((per_rank)) && command=(sh -c '"$0" "$1" 2>&1; echo "dead-peer: rank $OMPI_COMM_WORLD_RANK exit status $?"'
                           "$binary" --gtest_filter='DeadPeer.*')
  start=$(date +%s)
  output=$(GRADCOMM_TEST_KILL_RANK=2 GRADCOMM_TEST_KILL_STEP=5 GRADCOMM_TEST_KILL_SIGNAL=$signal \
    GRADCOMM_TEST_TIMEOUT_MS=$timeout_ms timeout -k 5 "$limit" "$mpirun" -np 4 "$@" \
    -x GRADCOMM_TEST_KILL_RANK -x GRADCOMM_TEST_KILL_STEP -x GRADCOMM_TEST_KILL_SIGNAL -x GRADCOMM_TEST_TIMEOUT_MS \
    "${command[@]}" 2>&1)
  rc=$?
  elapsed=$(( $(date +%s) - start ))
  printf '%s\n' "$output" | grep -v -e "PMIX ERROR" -e "ORTE_ERROR_LOG" | tail -40
  echo "dead_peer.sh [$name]: exit $rc after ${elapsed}s"
  [[ $rc -ne 124 && $rc -ne 137 ]] || [[ $elapsed -lt $limit ]] || fail "[$name] ranks still alive after ${limit}s"
  if ((per_rank)); then
    ! grep -Eq "dead-peer: rank [0-9]+ exit status 0$" <<<"$output" || fail "[$name] a rank ended with exit status 0"
    grep -Eq "dead-peer: rank [013] exit status [1-9]" <<<"$output" || fail "[$name] no survivor ended non-zero"
  else
    [[ $rc -ne 0 ]] || fail "[$name] the job exited 0 although rank 2 stopped"
  fi
  grep -q "rank 2 kills itself at step 5" <<<"$output" || fail "[$name] rank 2 never reached the kill step"
  grep -Eq "$pattern" <<<"$output" || fail "[$name] no message matching: $pattern"
  echo "dead_peer.sh [$name]: PASS"
}

collective="(allreduce|allgather)[a-z]* of [0-9]+ elements on rank [013] did not complete within"
run_case died 9 0 "rank 2 .* exited on signal 9" "$@"
run_case died-recovery 9 3000 "$collective" --per-rank-status --enable-recovery "$@"
run_case hung 19 3000 "$collective" "$@"
