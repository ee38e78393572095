#!/usr/bin/env python3
"""Runs gradcomm-train under mpirun and asserts on its JSON summary.

  check_train.py --trainer PATH --mpirun PATH [--mpi-flag F ...] --np 4 \
      [--min-accuracy 0.90] [--versus "ARGS"] [--max-drop 1.5] [--min-bytes-ratio 1.5] \
      -- TRAINER ARGS...

With --versus, a second run (the baseline, e.g. dense) is made with the same seed and the
accuracy drop (in points) and the wire-bytes ratio baseline/run are checked. Every run
must also report bitwise-identical replicas.
"""
import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import os


def train(args, extra):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "summary.json")
        cmd = [args.mpirun, "-np", str(args.np), *args.mpi_flag, args.trainer, *extra, "--json", out]
        print("+", " ".join(shlex.quote(c) for c in cmd), flush=True)
        result = subprocess.run(cmd, timeout=args.timeout)
        if result.returncode != 0:
            sys.exit(f"FAIL: trainer exited with {result.returncode}")
        with open(out) as f:
            summary = json.load(f)
    print("summary:", json.dumps(summary), flush=True)
    if not summary.get("replicas_identical", False):
        sys.exit("FAIL: replicas differ between ranks")
    return summary


def add_run_arguments(parser, np, timeout):
    """What every driver of gradcomm-train under mpirun takes (check_resume.py too)."""
    parser.add_argument("--trainer", required=True)
    parser.add_argument("--mpirun", required=True)
    parser.add_argument("--mpi-flag", action="append", default=[])
    parser.add_argument("--np", type=int, default=np)
    parser.add_argument("--timeout", type=int, default=timeout)
    parser.add_argument("trainer_args", nargs=argparse.REMAINDER)


def trainer_args(args):
    """The trainer's own arguments, after the "--"."""
    return args.trainer_args[1:] if args.trainer_args[:1] == ["--"] else args.trainer_args


def main():
    parser = argparse.ArgumentParser()
    add_run_arguments(parser, np=4, timeout=900)
    parser.add_argument("--min-accuracy", type=float)
    parser.add_argument("--versus", help="baseline trainer arguments (one string)")
    parser.add_argument("--max-drop", type=float, help="accuracy points below the baseline allowed")
    parser.add_argument("--min-bytes-ratio", type=float, help="baseline bytes/step over this run's, at least")
    args = parser.parse_args()
    extra = trainer_args(args)

    run = train(args, extra)
    ok = True
    if args.min_accuracy is not None and run["test_accuracy"] < args.min_accuracy:
        print(f"FAIL: test accuracy {run['test_accuracy']:.4f} < {args.min_accuracy}")
        ok = False
    if args.versus is not None:
        base = train(args, shlex.split(args.versus))
        drop = 100.0 * (base["test_accuracy"] - run["test_accuracy"])
        ratio = base["bytes_per_step"] / max(run["bytes_per_step"], 1e-9)
        print(f"accuracy: run {100 * run['test_accuracy']:.2f}%, baseline {100 * base['test_accuracy']:.2f}% "
              f"(drop {drop:.2f} points); bytes/step ratio baseline/run {ratio:.2f}")
        if args.max_drop is not None and drop > args.max_drop:
            print(f"FAIL: accuracy drop {drop:.2f} points > {args.max_drop}")
            ok = False
        if args.min_bytes_ratio is not None and ratio < args.min_bytes_ratio:
            print(f"FAIL: bytes ratio {ratio:.2f} < {args.min_bytes_ratio}")
            ok = False
    print("PASS" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
