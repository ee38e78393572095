#!/usr/bin/env python3
"""Wire bytes per rank against the number of ranks, for the dense ring, DGC's sparse
allgather and the sparse allreduce (reduce-scatter), on real models' shapes; the
alpha-beta model calibrated on them and projected to more ranks
(docs/algorithms/sparse-allreduce.md, "Measured").

    /usr/bin/python3 bench/sparse_scaling.py measure --bench build/bench/gradcomm-bench --out out/scaling
    /usr/bin/python3 bench/sparse_scaling.py report out/scaling [--plot docs/img/sparse_scaling.png]

`measure` runs gradcomm-bench under mpirun (oversubscribed, unshaped: only the bytes
count) for every model, rank count and exchange, -w 1 -n 2 -c 0 (--warmup, --iters) at density 0.001 with
float32 values. A model too large for the machine's memory at that many ranks runs in
slices of its tensors (--model-slice) whose bytes add up; rows go to OUT/scaling.json.
`report` fits the volume model per model and exchange on the measured points, prints the
measured table, the fit and its error on the measured points, and the projection to 64,
256 and 1,024 ranks in bytes and in time at --gbit Gbit/s with --alpha-us latency.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

EXCHANGES = {
    "dense": ["--compressor", "none"],
    "allgather": ["--compressor", "dgc", "--exchange", "allgather"],
    "reduce_scatter": ["--compressor", "dgc", "--exchange", "reduce_scatter"],
}
# Bytes of host memory one rank may need per parameter of a slice. The buffers counted
# (gradient, output, DGC's u and v, the send arena: 4 bytes each) make 20, but with 28 the
# dense run of BERT-large at 2 ranks (a first slice of 250M parameters) was killed for
# memory on a 24 GiB machine, while slices of at most 143M ran: what MPI and the allocator
# add is not counted, so leave room.
BYTES_PER_PARAM = 64


def model_tensors(models_dir, model):
    """[(name, numel, ndim)] of bench/models/<model>.txt."""
    tensors = []
    with open(os.path.join(models_dir, model + ".txt")) as f:
        for line in f:
            fields = line.split("#")[0].split()
            if not fields:
                continue
            numel = 1
            for d in fields[1:]:
                numel *= int(d)
            tensors.append((fields[0], numel, len(fields) - 1))
    return tensors


def slices(tensors, most_params):
    """Consecutive [first, end) runs of tensors of at most most_params parameters (a larger
    tensor alone)."""
    out, first, total = [], 0, 0
    for i, (_, numel, _) in enumerate(tensors):
        if i > first and total + numel > most_params:
            out.append((first, i))
            first, total = i, 0
        total += numel
    out.append((first, len(tensors)))
    return out


def available_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 8 << 30


def measure(args):
    os.makedirs(args.out, exist_ok=True)
    models_dir = args.models_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
    budget = args.budget_gb * 1e9 if args.budget_gb else 0.6 * available_bytes()
    rows = []
    for model in args.models.split(","):
        tensors = model_tensors(models_dir, model)
        for p in [int(x) for x in args.ranks.split(",")]:
            parts = slices(tensors, int(budget / (p * BYTES_PER_PARAM)))
            for exchange, flags in EXCHANGES.items():
                total, local, n_layers = 0, 0, 0
                for first, end in parts:
                    with tempfile.TemporaryDirectory() as tmp:
                        out = os.path.join(tmp, "row.json")
                        cmd = [args.mpirun, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", str(p),
                               args.bench, "--model", model, "--models-dir", models_dir, "-w", str(args.warmup),
                               "-n", str(args.iters), "-c", "0",
                               "--density", str(args.density), "--json", out, *flags]
                        if len(parts) > 1:
                            cmd += ["--model-slice", f"{first}:{end}"]
                        print("+", " ".join(cmd), flush=True)
                        result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                                timeout=args.timeout)
                        if result.returncode != 0:
                            sys.exit(f"FAIL ({result.returncode}): {result.stderr[-2000:]}")
                        with open(out) as f:
                            row = json.load(f)[0]
                    total += row["wire_bytes_per_rank"]
                    local += row.get("local_wire_bytes_per_rank", 0)
                    n_layers += end - first
                rows.append({"model": model, "ranks": p, "exchange": exchange, "wire_bytes_per_rank": total,
                             "slices": len(parts), "tensors": n_layers, "density": args.density})
                print(f"{model} p={p} {exchange}: {total} B/rank ({len(parts)} slice(s))", flush=True)
                with open(os.path.join(args.out, "scaling.json"), "w") as f:
                    json.dump(rows, f, indent=1)


def volume_terms(exchange, p):
    """The model's terms (each multiplied by a fitted coefficient) of bytes per rank at p."""
    ring = 2.0 * (p - 1) / p  # a ring allreduce of one byte
    if exchange == "dense":
        return [ring]
    if exchange == "allgather":
        return [p - 1.0, ring]  # every rank's slot lists; the dense 1-D tensors
    # Entries, kept sums and the 1-D tensors' ring all scale as (p-1)/p: one coefficient
    # (two collinear terms would leave the normal equations singular); count words.
    return [(p - 1.0) / p, p - 1.0]


def fit(points, exchange):
    """Least squares of bytes = sum(c_i * term_i(p)), c_i >= 0 (numpy-free: tiny normal equations)."""
    n = len(volume_terms(exchange, 2))
    a = [[0.0] * n for _ in range(n)]
    b = [0.0] * n
    for p, y in points:
        t = volume_terms(exchange, p)
        for i in range(n):
            b[i] += t[i] * y
            for j in range(n):
                a[i][j] += t[i] * t[j]
    # Gaussian elimination (n <= 3).
    for i in range(n):
        pivot = max(range(i, n), key=lambda r: abs(a[r][i]))
        a[i], a[pivot], b[i], b[pivot] = a[pivot], a[i], b[pivot], b[i]
        for r in range(i + 1, n):
            f = a[r][i] / a[i][i] if a[i][i] else 0.0
            for c in range(i, n):
                a[r][c] -= f * a[i][c]
            b[r] -= f * b[i]
    coef = [0.0] * n
    for i in reversed(range(n)):
        s = b[i] - sum(a[i][c] * coef[c] for c in range(i + 1, n))
        coef[i] = s / a[i][i] if a[i][i] else 0.0
    return coef


def predict(coef, exchange, p):
    return sum(c * t for c, t in zip(coef, volume_terms(exchange, p)))


# Collective steps (latencies) of one exchange on p ranks: ring allreduce, ring allgather,
# and the sparse allreduce's counts, entries and kept sums (pairwise, p - 1 each).
def steps(exchange, p):
    return {"dense": 2 * (p - 1), "allgather": p - 1, "reduce_scatter": 3 * (p - 1)}[exchange]


def report(args):
    with open(os.path.join(args.results, "scaling.json")) as f:
        rows = json.load(f)
    models = sorted({r["model"] for r in rows}, key=lambda m: [r["model"] for r in rows].index(m))
    ranks = sorted({r["ranks"] for r in rows})
    beta = 8.0 / (args.gbit * 1e9)  # seconds per byte
    alpha = args.alpha_us * 1e-6
    fits = {}
    print("## Measured: bytes per rank per step\n")
    print("| model | exchange | " + " | ".join(f"p = {p}" for p in ranks) + " | p = 16 / p = 4 |")
    print("| --- | --- | " + " | ".join("---:" for _ in ranks) + " | ---: |")
    for m in models:
        for e in EXCHANGES:
            got = {r["ranks"]: r["wire_bytes_per_rank"] for r in rows if r["model"] == m and r["exchange"] == e}
            if not got:
                continue
            ratio = f"{got[16] / got[4]:.2f}" if 16 in got and 4 in got else "-"
            print(f"| {m} | {e} | " + " | ".join(f"{got[p]:,}" if p in got else "-" for p in ranks) + f" | {ratio} |")
            fits[(m, e)] = (fit(sorted(got.items()), e), got)
    print("\n## The volume model, fitted on the measured points\n")
    print("| model | exchange | model (bytes per rank) | largest error on the measured points |")
    print("| --- | --- | --- | ---: |")
    names = {"dense": ["2(p-1)/p"], "allgather": ["(p-1)", "2(p-1)/p"], "reduce_scatter": ["(p-1)/p", "(p-1)"]}
    for (m, e), (coef, got) in fits.items():
        formula = " + ".join(f"{c:,.0f} {t}" for c, t in zip(coef, names[e]))
        err = max(abs(predict(coef, e, p) - y) / y for p, y in got.items())
        print(f"| {m} | {e} | {formula} | {100 * err:.2f}% |")
    print(f"\n## Projected (bytes per rank per step; time at {args.gbit:g} Gbit/s, {args.alpha_us:g} us per step)\n")
    targets = [64, 256, 1024]
    print("| model | exchange | " + " | ".join(f"p = {p}" for p in targets) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in targets) + " |")
    for (m, e), (coef, _) in fits.items():
        cells = []
        for p in targets:
            b = predict(coef, e, p)
            t = steps(e, p) * alpha + b * beta
            cells.append(f"{b / 1e6:,.2f} MB, {t * 1e3:,.0f} ms")
        print(f"| {m} | {e} | " + " | ".join(cells) + " |")
    if args.plot:
        plot(fits, args.plot, ranks, targets)


def plot(fits, path, ranks, targets):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = []
    for (m, _) in fits:
        if m not in models:
            models.append(m)
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    colors = {"dense": "tab:gray", "allgather": "tab:red", "reduce_scatter": "tab:blue"}
    labels = {"dense": "dense ring", "allgather": "sparse allgather", "reduce_scatter": "sparse reduce-scatter"}
    line_p = sorted(set(ranks) | set(targets) | {2 ** i for i in range(1, 11)})
    for ax, m in zip(axes[0], models):
        for e in EXCHANGES:
            if (m, e) not in fits:
                continue
            coef, got = fits[(m, e)]
            ax.plot(line_p, [predict(coef, e, p) for p in line_p], "--", color=colors[e], linewidth=1)
            ax.plot(list(got), list(got.values()), "o", color=colors[e], label=labels[e])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("ranks (points measured, dashed: the fitted model)")
        ax.set_ylabel("bytes sent per rank per step")
        ax.set_title(f"{m}, DGC density 0.001, fp32")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nwrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--bench", required=True)
    m.add_argument("--mpirun", default="mpirun")
    m.add_argument("--out", required=True)
    m.add_argument("--models", default="resnet50,bert-large")
    m.add_argument("--models-dir")
    m.add_argument("--ranks", default="2,4,8,16")
    m.add_argument("--density", type=float, default=0.001)
    m.add_argument("--budget-gb", type=float, help="host memory for one run (default 60%% of MemAvailable)")
    m.add_argument("--timeout", type=int, default=1800)
    # The step after the first counts only steady-state bytes (the first step of the sparse
    # allreduce also computes its regions); fewer steps save time on large models.
    m.add_argument("--warmup", type=int, default=1, help="untimed steps per run (default 1)")
    m.add_argument("--iters", type=int, default=2, help="measured steps per run (default 2)")
    r = sub.add_parser("report")
    r.add_argument("results")
    r.add_argument("--plot")
    r.add_argument("--gbit", type=float, default=10.0)
    r.add_argument("--alpha-us", type=float, default=25.0)
    args = parser.parse_args()
    measure(args) if args.what == "measure" else report(args)


if __name__ == "__main__":
    main()
