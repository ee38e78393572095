#!/usr/bin/env python3
"""Misuses of gradcomm-train and gradcomm-bench under mpirun, as a careless user makes them.

  check_misuse.py --trainer PATH --bench PATH --mpirun PATH [--mpi-flag F ...] KIND

KIND is one of the groups below (CASES). Each case starts one job, often with other
arguments on one rank (mpirun's "A : B" form, so the odd rank can be rank 0 or the last),
and asserts:
  - the exit status of every rank (each rank runs inside a shell that prints its own
    status, and mpirun is told not to kill the others when one exits non-zero), or, for a
    job that must be aborted, that mpirun ends non-zero and no rank reports 0;
  - the words of the messages, and on which rank's stderr they appear (--tag-output);
  - that every rank has ended within the case's bound: a job still running then is
    killed and the case fails (a hang). The bound is a hang detector, far above the times
    measured (they are printed, with the slowest of the group, and never asserted).
Cases of a group run a few at a time: most of their time is mpirun's start.
"""
import argparse
import concurrent.futures
import gzip
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time

# A rank's own exit status and when it ended, printed by the shell around it.
WRAP = ["sh", "-c", '"$0" "$@"; echo "misuse: rank $OMPI_COMM_WORLD_RANK exit $? at $(date +%s.%N)"']
EXIT_LINE = re.compile(r"misuse: rank (\d+) exit (\d+) at ([0-9.]+)")
TAG = re.compile(r"^\[\d+,(\d+)\]<(stdout|stderr)>:(.*)$")
NOISE = ("PMIX ERROR", "ORTE_ERROR_LOG")


class Case:
    """One job. ranks: the argument list of each rank (None: the common arguments).
    exits: {rank: status} for every rank, or "abort" (mpirun non-zero, no rank reports 0).
    says: [(rank or None for any, text)]; once: texts that must appear exactly once.
    stop: (rank, seconds after `after` appeared in the output): that rank gets `signal`.
    leaves_no: paths that must not exist after the job (it stopped before making them)."""

    def __init__(self, name, program, np, common, odd=None, exits=2, says=(), once=(), bound=60, stop=None,
                 after=None, signal=signal.SIGSTOP, leaves_no=()):
        self.name, self.program, self.np, self.common = name, program, np, list(common)
        self.ranks = [list(common) + (list(odd[1]) if odd and odd[0] == r else []) for r in range(np)]
        self.exits = exits if exits == "abort" or isinstance(exits, dict) else {r: exits for r in range(np)}
        self.says, self.once, self.bound, self.stop, self.after = list(says), list(once), bound, stop, after
        self.signal = signal
        self.leaves_no = list(leaves_no)


def command(args, case, binary):
    cmd = [args.mpirun, "--tag-output", *args.mpi_flag]
    for r, rank_args in enumerate(case.ranks):
        if r:
            cmd.append(":")
        cmd += ["-np", "1", *WRAP, binary, *rank_args]
    return cmd


def run_case(args, case):
    binary = args.trainer if case.program == "train" else args.bench
    cmd = command(args, case, binary)
    env = dict(os.environ, OMPI_MCA_orte_abort_on_non_zero_status="0")
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    lines, stopped = [], []

    def reader():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    if case.stop:
        rank, delay = case.stop
        while proc.poll() is None and not any(case.after in line for line in lines):
            if time.time() - start > case.bound:
                break
            time.sleep(0.05)
        time.sleep(delay)
        pid = rank_pid(proc.pid, rank, binary)
        if pid:
            os.kill(pid, case.signal)
            stopped.append(pid)
    hung = False
    try:
        proc.wait(timeout=max(1.0, case.bound - (time.time() - start)))
    except subprocess.TimeoutExpired:
        hung = True
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pid in stopped:  # a stopped rank the job did not take down
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    thread.join(5)
    elapsed = time.time() - start
    return check(case, cmd, proc.returncode, lines, start, elapsed, hung, bool(stopped) or not case.stop)


def rank_pid(mpirun_pid, rank, binary):
    """The pid of `binary` started for `rank` under this mpirun (a descendant of it)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    todo, found = [mpirun_pid], []
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            try:
                exe = os.readlink(f"/proc/{child}/exe")
                with open(f"/proc/{child}/environ", "rb") as f:
                    environ = f.read().split(b"\0")
            except OSError:
                continue
            if os.path.realpath(exe) == os.path.realpath(binary) and \
                    f"OMPI_COMM_WORLD_RANK={rank}".encode() in environ:
                found.append(child)
    return found[0] if found else None


def check(case, cmd, returncode, lines, start, elapsed, hung, stop_done):
    """Returns (ok, report lines, elapsed)."""
    by_rank, exits, ends, anywhere = {}, {}, [], []
    for line in lines:
        if any(n in line for n in NOISE):
            continue
        anywhere.append(line)
        m = TAG.match(line)
        if not m:
            continue
        rank, text = int(m.group(1)), m.group(3)
        e = EXIT_LINE.search(text)
        if e:
            exits[int(e.group(1))] = int(e.group(2))
            ends.append(float(e.group(3)) - start)
        else:
            by_rank.setdefault(rank, []).append(text)
    problems = []
    if hung:
        problems.append(f"still running after {case.bound} s: a hang (killed)")
    if not stop_done:
        problems.append(f"never saw '{case.after}' to stop rank {case.stop[0]} after")
    if case.exits == "abort":
        if returncode == 0:
            problems.append("mpirun exited 0")
        if 0 in exits.values():
            problems.append(f"a rank exited 0: {exits}")
        if case.signal == signal.SIGKILL and exits.get(case.stop[0]) != 128 + signal.SIGKILL:
            problems.append(f"rank {case.stop[0]} did not report its kill (exit {128 + signal.SIGKILL})")
    elif exits != case.exits:
        problems.append(f"exit statuses {dict(sorted(exits.items()))}, expected {case.exits}")
    text_all = "\n".join(anywhere)
    for rank, words in case.says:
        where = "\n".join(by_rank.get(rank, [])) if rank is not None else text_all
        if words not in where:
            problems.append(f"no '{words}'" + (f" from rank {rank}" if rank is not None else ""))
    for path in case.leaves_no:
        if os.path.exists(path):
            problems.append(f"{path} exists: the job went on past the check that should have stopped it")
    for words in case.once:
        n = text_all.count(words)
        if n != 1:
            problems.append(f"'{words}' printed {n} times, expected once")
    last = max(ends) if ends else elapsed
    report = [f"{'ok  ' if not problems else 'FAIL'} {case.program} {case.name}: np {case.np}, "
              f"exits {dict(sorted(exits.items())) if exits else '(killed by the abort)'}, mpirun {returncode}, "
              f"last rank ended after {last:.1f} s, job {elapsed:.1f} s"]
    if problems:
        report += ["     " + p for p in problems]
        report += ["     + " + " ".join(shlex.quote(c) for c in cmd)] + ["     | " + l for l in anywhere[-30:]]
    return not problems, report, max(last, elapsed)


def altered_digits(tmp):
    """A copy of the digits data with one pixel changed: same shape, other data."""
    path = os.environ.get("GRADCOMM_DIGITS", "/usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz")
    with gzip.open(path, "rt") as f:
        rows = f.read().splitlines()
    cells = rows[0].split(",")
    cells[10] = "16" if cells[10] != "16" else "0"
    rows[0] = ",".join(cells)
    out = os.path.join(tmp, "digits-altered.csv.gz")
    with gzip.open(out, "wt") as f:
        f.write("\n".join(rows) + "\n")
    return out


def has_gpu():
    """Whether this machine shows a CUDA device (then --device cuda is no misuse)."""
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


def cases(kind, tmp):
    train = ["--epochs", "2", "--quiet", "--hidden", "32"]
    bench = ["-b", "8", "-e", "64K", "-f", "8", "-n", "2", "-w", "1"]
    ckpt = os.path.join(tmp, "ckpt")
    not_started = "failed before the start (their messages say why)"
    differ = "the ranks were started with other settings: the settings differ between ranks: "
    groups = {
        # A rank whose own command line, file or memory fails: every rank exits 2; the
        # failed rank says why, the others name it.
        "start": [
            Case("bad value on rank 1", "train", 2, train, (1, ["--density", "0"]),
                 says=[(1, "--density '0': expected a finite number in (0, 1]"), (0, "rank(s) 1 " + not_started)]),
            Case("unknown compressor on rank 0 of 3", "train", 3, train, (0, ["--compressor", "topk"]),
                 says=[(0, "--compressor 'topk': expected none | dgc"), (1, "rank(s) 0 " + not_started),
                       (2, "rank(s) 0 " + not_started)]),
            Case("unreadable --digits on the last of 3", "train", 3, train, (2, ["--digits", "/etc/passwd"]),
                 says=[(2, "/etc/passwd:1: value 1 is not a number"), (0, "rank(s) 2 " + not_started)]),
            Case("missing --digits on the last of 4", "train", 4, train, (3, ["--digits", "/no/such/digits.csv.gz"]),
                 says=[(3, "cannot open the digits data set at /no/such/digits.csv.gz"),
                       (1, "rank(s) 3 " + not_started)]),
            Case("unknown flag on rank 1", "train", 2, train, (1, ["--learning-rate", "0.1"]),
                 says=[(1, "unknown flag '--learning-rate'"), (0, "rank(s) 1 " + not_started)]),
            Case("--help on rank 1 only", "train", 2, train, (1, ["--help"]),
                 says=[(0, "rank(s) 1 were given --help and the others were not")]),
            Case("the same bad value on every rank", "train", 3, train + ["--lr", "0"],
                 says=[(0, "gradcomm-train: --lr '0': expected a finite number > 0")], once=["--lr '0'"]),
            Case("--help on every rank", "train", 2, ["--help"], exits=0, says=[(0, "--timeout SECONDS")],
                 once=["--timeout SECONDS"]),
            *([] if has_gpu() else [
                Case("--device cuda without a GPU", "train", 2, train + ["--device", "cuda"],
                     says=[(0, "local_cuda_device (local rank 0"), (1, "local_cuda_device (local rank 1")]),
                Case("--device cuda without a GPU", "bench", 3, bench + ["--device", "cuda"],
                     says=[(r, f"local_cuda_device (local rank {r}") for r in range(3)]),
            ]),
            Case("unknown compressor on rank 1", "bench", 2, bench, (1, ["--compressor", "topk"]),
                 says=[(1, "unknown compressor 'topk' (available: none"), (0, "rank(s) 1 " + not_started)]),
            Case("row too large for memory on rank 0 of 3", "bench", 3, bench,
                 (0, ["-b", "4000000G", "-e", "4000000G"]),
                 says=[(0, "is available (MemAvailable in /proc/meminfo); lower -e"),
                       (2, "rank(s) 0 " + not_started)]),
            Case("unknown model on the last of 3", "bench", 3, bench, (2, ["--model", "resnet51"]),
                 says=[(2, "unknown model 'resnet51' (known: resnet50"), (1, "rank(s) 2 " + not_started)]),
        ],
        # Ranks given other settings: every rank exits 2, rank 0 names the first differing
        # setting with both values.
        "settings": [
            Case("--epochs on rank 1", "train", 2, train, (1, ["--epochs", "3"]),
                 says=[(0, differ + "'--epochs' is 2 on rank 0 and 3 on rank 1")]),
            Case("--batch on the last of 3", "train", 3, train, (2, ["--batch", "8"]),
                 says=[(0, differ + "'--batch' is 16 on rank 0 and 8 on rank 2")]),
            Case("--checkpoint-dir on rank 0 only", "train", 2, train, (0, ["--checkpoint-dir", ckpt]),
                 says=[(0, differ + f"'--checkpoint-dir' is {ckpt} on rank 0 and (none) on rank 1")],
                 leaves_no=[ckpt]),
            Case("--lr on rank 1 of 3", "train", 3, train, (1, ["--lr", "0.01"]),
                 says=[(0, differ + "'--lr' is default on rank 0 and 0.01 on rank 1")]),
            Case("--seed on the last of 4", "train", 4, train, (3, ["--seed", "2"]),
                 says=[(0, differ + "'--seed' is 1 on rank 0 and 2 on rank 3")]),
            Case("sgd against onebit-adam", "train", 2, train, (0, ["--optimizer", "onebit-adam"]),
                 says=[(0, differ + "'--optimizer' is onebit-adam on rank 0 and sgd on rank 1")]),
            Case("--stop-after-epoch on rank 1", "train", 2, train + ["--checkpoint-dir", ckpt],
                 (1, ["--stop-after-epoch", "1"]),
                 says=[(0, differ + "'--stop-after-epoch' is 0 on rank 0 and 1 on rank 1")]),
            Case("--timeout on rank 1", "train", 2, train, (1, ["--timeout", "30"]),
                 says=[(0, differ + "'--timeout' is 120 on rank 0 and 30 on rank 1")]),
            Case("other data on rank 1", "train", 2, train, (1, ["--digits", altered_digits(tmp)]),
                 says=[(0, differ + "'data' is 1797-samples-")]),
            Case("-n on rank 1", "bench", 2, bench, (1, ["-n", "3"]),
                 says=[(0, differ + "'-n' is 2 on rank 0 and 3 on rank 1")]),
            Case("--density on the last of 3", "bench", 3, bench + ["--compressor", "dgc"],
                 (2, ["--density", "0.01"]), says=[(0, differ + "'--density' is 0.001 on rank 0 and 0.01 on rank 2")]),
            Case("--compressor on rank 0", "bench", 2, bench, (0, ["--compressor", "quant"]),
                 says=[(0, differ + "'--compressor' is quant on rank 0 and none on rank 1")]),
        ],
        # Values out of range, not finite, overflowing or infeasible, on every rank: exit 2,
        # printed once. (Each flag's full range is tested without mpirun: misuse.parse.*.)
        "flags": [
            Case("--lr -1", "train", 2, train + ["--lr", "-1"], once=["--lr '-1': expected a finite number > 0"]),
            Case("--momentum nan", "train", 2, train + ["--momentum", "nan"],
                 once=["--momentum 'nan': expected a finite number in [0, 1)"]),
            Case("--batch over the training set", "train", 3, train + ["--batch", "1000"],
                 once=["--batch 1000 on 3 ranks takes more than the 1438 training samples per step; "
                       "use at most --batch 479"]),
            Case("--epochs overflowing", "train", 2, train + ["--epochs", "99999999999999999999"],
                 once=["--epochs '99999999999999999999': expected an integer in [1, 1000000]"]),
            Case("a model too large for memory", "train", 2, train + ["--hidden", "1000000,1000000"],
                 once=["is available (MemAvailable in /proc/meminfo); lower --hidden or --batch"]),
            Case("--digits /etc/passwd", "train", 2, train + ["--digits", "/etc/passwd"],
                 once=["/etc/passwd:1: value 1 is not a number"]),
            Case("--stop-after-epoch past --epochs", "train", 2,
                 train + ["--checkpoint-dir", ckpt, "--stop-after-epoch", "3"],
                 once=["--stop-after-epoch 3 is past --epochs 2"]),
            Case("--freeze-fraction leaving no warm-up step", "train", 2,
                 train + ["--optimizer", "onebit-adam", "--epochs", "1", "--freeze-fraction", "0.001"],
                 once=["leaves 1-bit Adam no warm-up step"]),
            Case("-e beyond 64 bits", "bench", 2, bench + ["-e", "99999999999G"],
                 once=["-e '99999999999G': expected a byte count that fits in 64 bits"]),
            Case("-f nan", "bench", 2, bench + ["-f", "nan"], once=["-f 'nan': expected a finite number >= 0"]),
            Case("a sweep of 268435456 rows", "bench", 2, ["-b", "4", "-e", "1G", "-i", "4"],
                 once=["makes 268435456 rows; at most 1000"]),
        ],
        # Failures during the run.
        "run": [
            # Raised on every rank alike (the non-finite count travels with the payloads).
            Case("a diverging run under --nonfinite error", "train", 2, train + ["--lr", "1e30"], exits=1,
                 says=[(0, "ranks met NaN or Inf in the gradients")]),
            # A stopped peer: the others' watchdog names the collective and ends the job.
            Case("SIGSTOP of rank 2 of 4", "train", 4, ["--epochs", "1000", "--hidden", "32", "--timeout", "2"],
                 exits="abort", stop=(2, 0.5), after="epoch   1",
                 says=[(None, "did not complete within"), (None, "(collective_timeout)"),
                       (None, "aborts the MPI job")]),
            Case("SIGSTOP of rank 1 of 3", "bench", 3, ["-b", "4M", "-e", "4M", "-n", "100000", "--timeout", "2"],
                 exits="abort", stop=(1, 0.5), after="warmup iters",
                 says=[(None, "did not complete within"), (None, "aborts the MPI job")]),
            # A dead peer: Open MPI's runtime ends the job and names it (here the shell around
            # the rank reports the kill, and mpirun that the rank ended without finalizing).
            Case("SIGKILL of rank 1 of 3", "train", 3, ["--epochs", "1000", "--hidden", "32"], exits="abort",
                 stop=(1, 0.5), after="epoch   1", signal=signal.SIGKILL,
                 says=[(None, "mpirun has exited due to process rank 1")]),
        ],
    }
    return groups[kind]


def resume_cases(args, tmp):
    """--resume asking for fewer epochs than the checkpoint has: refused on every rank."""
    ckpt = os.path.join(tmp, "done")
    base = ["--quiet", "--hidden", "32", "--checkpoint-dir", ckpt]
    first = subprocess.run([args.mpirun, *args.mpi_flag, "-np", "2", args.trainer, *base, "--epochs", "2"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    if first.returncode != 0:
        sys.exit(f"FAIL: the run to resume from exited {first.returncode}:\n{first.stdout}")
    nothing_left = "was saved after epoch 2, and this run would end after epoch "
    return [
        Case("--resume with fewer --epochs", "train", 2, base + ["--resume", "--epochs", "1"],
             once=[nothing_left + "1: nothing is left to train"]),
        Case("--resume with the same --epochs", "train", 2, base + ["--resume", "--epochs", "2"],
             once=[nothing_left + "2: nothing is left to train"]),
        Case("--resume stopping at the checkpoint's epoch", "train", 2,
             base + ["--resume", "--epochs", "5", "--stop-after-epoch", "2"],
             once=[nothing_left + "2: nothing is left to train"]),
    ]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trainer", required=True)
    parser.add_argument("--bench", required=True)
    parser.add_argument("--mpirun", required=True)
    parser.add_argument("--mpi-flag", action="append", default=[])
    parser.add_argument("--parallel", type=int, default=3, help="jobs at a time")
    parser.add_argument("kind", choices=["start", "settings", "flags", "run", "resume"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        todo = resume_cases(args, tmp) if args.kind == "resume" else cases(args.kind, tmp)
        with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
            results = list(pool.map(lambda c: run_case(args, c), todo))
    for _, report, _ in results:
        print("\n".join(report))
    slowest = max(results, key=lambda r: r[2])
    print(f"{len(results)} cases; slowest to end every rank: {slowest[2]:.1f} s ({slowest[1][0].split(':')[0][5:]})")
    failed = sum(1 for ok, _, _ in results if not ok)
    if failed:
        sys.exit(f"FAIL: {failed} of {len(results)} cases")
    print("PASS")


if __name__ == "__main__":
    main()
