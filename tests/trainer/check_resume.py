#!/usr/bin/env python3
"""Checks gradcomm-train's --checkpoint-dir / --resume.

  check_resume.py --trainer PATH --mpirun PATH [--mpi-flag F ...] --np 2 \
      [--epochs 10] [--stops 2,7] [--errors] -- COMMON TRAINER ARGS...

Bitwise resume (the default): for every compressor and optimizer the trainer accepts, an
uninterrupted run of --epochs, then the same run stopped after each epoch in --stops and
resumed from its checkpoint each time, to the end. The final parameter fingerprints (a
hash of every parameter bit on every rank) must be equal. A combination the trainer
refuses (exit 2 before training) must be one of REFUSED, so a newly accepted one is
tested rather than skipped.

--errors: the ways a resume goes wrong (no checkpoint, another number of ranks, a damaged
or missing shard, other settings, a directory that cannot be made, a fresh run over a
checkpoint) must end every rank with a non-zero exit and a message saying why, within the
timeout (no hang).
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

from check_train import add_run_arguments, trainer_args

COMPRESSORS = ["none", "dgc", "quant", "lgreco-dgc", "lgreco-quant"]
OPTIMIZERS = ["sgd", "adam", "onebit-adam"]
# Adam cannot follow a compressor that carries momentum; 1-bit Adam communicates itself.
REFUSED = {("dgc", "adam"), ("lgreco-dgc", "adam")} | {(c, "onebit-adam") for c in COMPRESSORS if c != "none"}


class Runner:
    def __init__(self, args, common):
        self.args, self.common = args, common

    def run(self, extra, np=None, json_out=None, each_rank=False):
        """Runs the trainer; returns (exit code, stdout + stderr, summary or None). each_rank:
        every rank runs to its end, even after another exited non-zero (Open MPI's mpirun
        would kill it), and reports its own exit status as a line "rank exit S"; the exit
        code returned is then that of mpirun, which is 0 in this mode."""
        trainer = [self.args.trainer]
        env = None
        if each_rank:
            trainer = ["sh", "-c", '"$0" "$@"; echo "rank exit $?"', self.args.trainer]
            env = dict(os.environ, OMPI_MCA_orte_abort_on_non_zero_status="0")
        cmd = [self.args.mpirun, "-np", str(np or self.args.np), *self.args.mpi_flag, *trainer, *self.common, *extra]
        if json_out:
            cmd += ["--json", json_out]
        print("+", " ".join(shlex.quote(c) for c in cmd), flush=True)
        start = time.monotonic()
        try:
            result = subprocess.run(cmd, timeout=self.args.timeout, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, env=env)
        except subprocess.TimeoutExpired:
            sys.exit(f"FAIL: no exit within {self.args.timeout} s (a hang)")
        output = result.stdout
        summary = None
        if result.returncode == 0 and json_out:
            with open(json_out) as f:
                summary = json.load(f)
        print(f"  exit {result.returncode} after {time.monotonic() - start:.1f} s", flush=True)
        return result.returncode, output, summary

    def train(self, extra, tmp):
        """A run that must succeed with identical replicas; returns its summary."""
        code, output, summary = self.run(extra, json_out=os.path.join(tmp, "summary.json"))
        if code != 0:
            print(output)
            sys.exit(f"FAIL: trainer exited with {code}")
        if not summary["replicas_identical"]:
            sys.exit("FAIL: replicas differ between ranks")
        return summary


def check_bitwise(runner, epochs, stops):
    tested, refused = [], []
    for compressor in COMPRESSORS:
        for optimizer in OPTIMIZERS:
            combo = ["--compressor", compressor, "--optimizer", optimizer, "--epochs", str(epochs)]
            with tempfile.TemporaryDirectory() as tmp:
                code, output, summary = runner.run(combo, json_out=os.path.join(tmp, "summary.json"))
                if code == 2 and (compressor, optimizer) in REFUSED:
                    refused.append(f"{compressor}+{optimizer}")
                    continue
                if code != 0:
                    print(output)
                    sys.exit(f"FAIL: {compressor}+{optimizer}: the uninterrupted run exited with {code}")
                ckpt = os.path.join(tmp, "ckpt")
                for i, stop in enumerate(stops):
                    part = runner.train(combo + ["--checkpoint-dir", ckpt, "--stop-after-epoch", str(stop)]
                                        + (["--resume"] if i else []), tmp)
                    if part["epochs_done"] != stop:
                        sys.exit(f"FAIL: {compressor}+{optimizer}: stopped after {part['epochs_done']} epochs, not {stop}")
                resumed = runner.train(combo + ["--checkpoint-dir", ckpt, "--resume"], tmp)
            same = {k: (summary[k], resumed[k]) for k in ("parameters_fingerprint", "steps", "bytes_per_step",
                                                          "test_accuracy")}
            print(f"{compressor}+{optimizer}: " + ", ".join(f"{k} {a} / {b}" for k, (a, b) in same.items()),
                  flush=True)
            if any(a != b for a, b in same.values()):
                sys.exit(f"FAIL: {compressor}+{optimizer}: the run resumed after epochs {stops} differs from "
                         "the uninterrupted one")
            tested.append(f"{compressor}+{optimizer}")
    print(f"bitwise after resumes at epochs {stops} of {epochs}: {', '.join(tested)}; refused: {', '.join(refused)}")


def expect_failure(runner, name, extra, messages, np=None, every_rank=True):
    """Every rank must exit non-zero, and the output say each of `messages`; with every_rank,
    every rank must also print an error (its own reason, or that another rank failed)."""
    messages = [messages] if isinstance(messages, str) else messages
    _, output, _ = runner.run(extra, np=np, each_rank=True)
    np = np or runner.args.np
    lines = output.splitlines()
    codes = [int(line.split()[-1]) for line in lines if line.startswith("rank exit ")]
    errors = sum(1 for line in lines if line.startswith("gradcomm-train: "))
    if len(codes) != np or 0 in codes or any(m not in output for m in messages) or (every_rank and errors < np):
        print(output)
        sys.exit(f"FAIL: {name}: expected a non-zero exit on each of the {np} ranks and {messages}"
                 f"{', with an error line from each rank' if every_rank else ''}; "
                 f"got exit codes {codes}, {errors} error lines")
    print(f"ok: {name}: exit codes {codes}, {messages}, {errors} error lines", flush=True)


def check_errors(runner, epochs):
    np = runner.args.np
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "ckpt")
        args = ["--epochs", str(epochs), "--checkpoint-dir", ckpt]
        # Settings errors are the same on every rank; rank 0 alone prints them (exit 2).
        expect_failure(runner, "nothing to resume", args + ["--resume"], "--resume: no checkpoint in",
                       every_rank=False)
        runner.train(args + ["--stop-after-epoch", "1"], tmp)
        expect_failure(runner, "a fresh run over a checkpoint", args, "already holds a checkpoint", every_rank=False)
        expect_failure(runner, "other settings", args + ["--resume", "--lr", "0.01"],
                       "saved with other settings (--lr default there, 0.01 here)")
        expect_failure(runner, "another compressor", args + ["--resume", "--compressor", "dgc"],
                       "saved with compressor 'none'; this run uses 'dgc'")
        # More ranks: the extra ones have no shard, the others a shard of a smaller world.
        expect_failure(runner, "more ranks", args + ["--resume"],
                       [f"saved by a world of {np} ranks", f"rank{np}.ckpt"], np=np + 1)
        if np > 1:
            expect_failure(runner, "fewer ranks", args + ["--resume"], f"saved by a world of {np} ranks",
                           np=np - 1)
        shard = os.path.join(ckpt, "epoch-000001.rank1.ckpt")
        with open(shard, "rb") as f:
            good = f.read()
        damaged = bytearray(good)
        damaged[-5] ^= 0x40
        with open(shard, "wb") as f:
            f.write(damaged)
        expect_failure(runner, "a damaged shard", args + ["--resume"], ["payload checksum mismatch", "rank(s) 1 failed"])
        os.remove(shard)
        expect_failure(runner, "a missing shard", args + ["--resume"], "epoch-000001.rank1.ckpt")
        with open(shard, "wb") as f:
            f.write(good)
        runner.train(args + ["--resume", "--stop-after-epoch", "2"], tmp)  # the restored shard is good again
        blocker = os.path.join(tmp, "a-file")
        open(blocker, "w").close()
        expect_failure(runner, "a directory that cannot be made",
                       ["--epochs", "1", "--checkpoint-dir", os.path.join(blocker, "ckpt")], "cannot create")
    print("every error ended the run with a message")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--stops", default="2,7", help="epochs after which to stop and resume")
    parser.add_argument("--errors", action="store_true", help="check the failures instead")
    add_run_arguments(parser, np=2, timeout=120)
    args = parser.parse_args()
    runner = Runner(args, trainer_args(args) + ["--quiet"])
    if args.errors:
        check_errors(runner, args.epochs)
    else:
        check_bitwise(runner, args.epochs, [int(s) for s in args.stops.split(",")])
    print("PASS")


if __name__ == "__main__":
    main()
