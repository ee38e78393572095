#!/usr/bin/env python3
"""Two installations of gradcomm, the same DDP job, in one run: is the newer one slower?

    bench/netem/run --rate 1gbit -- /usr/bin/python3 bench/ddp_compare_versions.py \\
        --old /path/to/old/venv/bin/python3 --new .venv/bin/python3 --out out/versions

Runs bench/ddp_compare.py (this tree's) under each interpreter in turn, old then new,
`--rounds` times (ABAB...), so drift of the machine's load hits both alike; every mpirun
goes through bench/netem/run's emulated links when run under it. Each interpreter imports
its own gradcomm (e.g. a venv built from an older commit with bindings/python/install.sh).
Prints, per method, the time per step of each round, the ratios (new / old) of the means
and of the medians, and the paired ratio: the geometric mean of each round's new / old
(the two runs of a round are neighbours in time) with its 95% confidence interval, which
says whether a difference stands out of the spread between rounds. Writes
OUT/versions.json. Arguments after `--` go to ddp_compare.py
(default: --methods gradcomm-dgc,gradcomm-onebit,gradcomm-lgreco --epochs 4).
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


# Student's t, two-sided 95%, for 1 to 30 degrees of freedom.
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]


def paired_ratio(old, new):
    """Geometric mean of the rounds' new / old and its 95% confidence interval (a t
    interval on the logarithms; None for the interval with a single round)."""
    logs = [math.log(n / o) for o, n in zip(old, new)]
    centre = statistics.mean(logs)
    if len(logs) < 2:
        return math.exp(centre), None
    df = len(logs) - 1
    z = 1.959964
    t = _T95[df - 1] if df <= len(_T95) else z + (z ** 3 + z) / (4 * df)
    half = t * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(centre), (math.exp(centre - half), math.exp(centre + half))


def main(argv):
    own, _, passed = (argv[: argv.index("--")], None, argv[argv.index("--") + 1:]) if "--" in argv else (argv, None, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", required=True, help="python of the older installation")
    p.add_argument("--new", required=True, help="python of the newer installation")
    p.add_argument("--out", required=True, help="directory for each run's JSON and versions.json")
    p.add_argument("--np", type=int, default=4, help="ranks (default 4)")
    p.add_argument("--rounds", type=int, default=2, help="old/new pairs (default 2)")
    args = p.parse_args(own)
    if args.rounds < 1 or args.np < 1:
        p.error("--rounds and --np must be positive")
    compare_args = passed or ["--methods", "gradcomm-dgc,gradcomm-onebit,gradcomm-lgreco", "--epochs", "4"]
    os.makedirs(args.out, exist_ok=True)
    runs = {"old": [], "new": []}
    for r in range(args.rounds):
        for which in ("old", "new"):
            path = os.path.join(args.out, f"{which}-{r}.json")
            cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(args.np),
                   getattr(args, which), os.path.join(HERE, "ddp_compare.py"), "--json", path] + compare_args
            print(f"ddp_compare_versions: round {r + 1} of {args.rounds}, {which}: {' '.join(cmd)}", flush=True)
            if subprocess.run(cmd).returncode != 0:
                print(f"ddp_compare_versions: the {which} run of round {r + 1} failed", file=sys.stderr)
                return 1
            with open(path) as f:
                runs[which].append(json.load(f))
    report = {"rounds": args.rounds, "ranks": args.np, "args": compare_args, "methods": {}}
    print(f"\n{'method':16s} {'old ms/step (rounds)':>26s} {'new ms/step (rounds)':>26s} {'new/old':>8s}"
          f" {'medians':>8s} {'paired (95% interval)':>24s}")
    methods = [r["method"] for r in runs["old"][0]["results"]]
    for m in methods:
        times = {}
        for which in ("old", "new"):
            times[which] = [next(x for x in run["results"] if x["method"] == m).get("time_per_step_ms")
                            for run in runs[which]]
        if any(t is None for t in times["old"] + times["new"]):
            print(f"{m:16s} skipped or failed in a run (see the JSON files)")
            continue
        ratio = statistics.mean(times["new"]) / statistics.mean(times["old"])
        # Medians too: on a loaded machine one slow round moves a mean by several percent.
        median_ratio = statistics.median(times["new"]) / statistics.median(times["old"])
        paired, interval = paired_ratio(times["old"], times["new"])
        fmt = lambda ts: " ".join(f"{t:.1f}" for t in ts)  # noqa: E731
        shown = f"{paired:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")
        print(f"{m:16s} {fmt(times['old']):>26s} {fmt(times['new']):>26s} {ratio:8.3f} {median_ratio:8.3f}"
              f" {shown:>24s}")
        report["methods"][m] = {"old_ms": times["old"], "new_ms": times["new"], "new_over_old": ratio,
                                "new_over_old_medians": median_ratio, "new_over_old_paired": paired,
                                "new_over_old_paired_95": list(interval) if interval else None}
    with open(os.path.join(args.out, "versions.json"), "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
