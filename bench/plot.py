#!/usr/bin/env python3
"""Plots gradcomm-bench JSON results (as bench/netem/collect writes them) into PNGs and
prints the tables docs/benchmarks.md quotes.

    /usr/bin/python3 bench/plot.py RESULTS_DIR docs/img

Reads every *.json in RESULTS_DIR (a list of gradcomm-bench rows, or a bench/ddp_compare.py
result) and writes:
- sweep_time.png: time per step vs message size, one panel per link, a line per compressor;
- sweep_busbw.png: bus bandwidth vs message size, the same layout;
- model_bytes.png: bytes each rank sends per step, per model and compressor;
- ddp_accuracy.png: test accuracy vs training time, a line per method (ddp_compare).
Then prints markdown tables: the 100 MB rows, the model rows and the DDP comparison.
"""
import glob
import json
import os
import re
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load_results(results_dir):
    """(gradcomm-bench rows, ddp_compare runs) found in results_dir."""
    rows, ddp = [], []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        with open(path) as f:
            data = json.load(f)
        if isinstance(data, dict) and "results" in data:
            data["file"] = os.path.basename(path)
            ddp.append(data)
            continue
        for row in data if isinstance(data, list) else [data]:
            row["file"] = os.path.basename(path)
            rows.append(row)
    return rows, ddp


def link_rate(row):
    """The rate part of the link label ("rate=1gbit delay=0 ..." -> "1gbit")."""
    m = re.search(r"rate=(\S+)", row.get("link", ""))
    return m.group(1) if m else row.get("link", "unshaped")


def rate_key(rate):
    m = re.match(r"(\d+)(bit|kbit|mbit|gbit)$", rate)
    if not m:
        return float("inf")
    return int(m.group(1)) * {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}[m.group(2)]


def human_bytes(n):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def sweep_plot(rows, key, ylabel, path, logy):
    sweep = [r for r in rows if r["file"].startswith("sweep-")]
    if not sweep:
        return False
    rates = sorted({link_rate(r) for r in sweep}, key=rate_key)
    fig, axes = plt.subplots(1, len(rates), figsize=(5 * len(rates), 4), sharey=True, squeeze=False)
    for ax, rate in zip(axes[0], rates):
        series = defaultdict(list)
        for r in sweep:
            if link_rate(r) == rate:
                series[r["compressor"]].append((r["size_bytes"], r[key]))
        for compressor, points in sorted(series.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=compressor)
        ranks = sweep[0].get("ranks", "?")
        bits_per_s = rate_key(rate)
        if key == "time_us" and bits_per_s != float("inf") and isinstance(ranks, int):
            # What a dense fp32 ring allreduce needs on this link: 2(p-1)/p * size bytes.
            sizes = sorted({r["size_bytes"] for r in sweep})
            ax.plot(sizes, [2 * (ranks - 1) / ranks * s * 8 / bits_per_s * 1e6 for s in sizes], "k--",
                    linewidth=1, label="dense ring, link-bound")
        ax.set_title(f"{rate} per rank, {ranks} ranks")
        ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("message size (bytes, dense fp32)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def model_plot(rows, path):
    # The collection's model runs (one rank count); other model rows go to the table only.
    models = [r for r in rows if r.get("model") and r["file"].startswith("model-")]
    if not models:
        return False
    names = sorted({r["model"] for r in models})
    compressors = sorted({r["compressor"] for r in models})
    fig, ax = plt.subplots(figsize=(2.5 + 2 * len(names), 4))
    width = 0.8 / len(compressors)
    for i, c in enumerate(compressors):
        values = []
        for m in names:
            match = [r["wire_bytes_per_rank"] for r in models if r["model"] == m and r["compressor"] == c]
            values.append(match[0] / 1e6 if match else 0)
        ax.bar([j + i * width for j in range(len(names))], values, width, label=c)
    ax.set_xticks([j + width * (len(compressors) - 1) / 2 for j in range(len(names))])
    ax.set_xticklabels(names)
    ax.set_ylabel("MB sent per rank per step")
    ax.set_yscale("log")
    ax.set_title(f"bytes per step, {models[0].get('ranks', '?')} ranks")
    ax.legend()
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def tables(rows):
    big = sorted((r for r in rows if r["file"].startswith("100MB-")),
                 key=lambda r: (rate_key(link_rate(r)), r["compressor"]))
    if big:
        print("| link (per rank) | compressor | time per step (s) | algbw (GB/s) | busbw (GB/s) | wire bytes per rank | #wrong |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for r in big:
            print(f"| {link_rate(r)} | {r['compressor']} | {r['time_us'] / 1e6:.2f} | {r['algbw_gbps']:.3f} | "
                  f"{r['busbw_gbps']:.3f} | {human_bytes(r['wire_bytes_per_rank'])} | {r['wrong']} |")
        print()
    models = sorted((r for r in rows if r.get("model")), key=lambda r: (r["model"], r["compressor"]))
    if models:
        print("| model | compressor | ranks | parameters | wire bytes per rank per step | time per step (s) | link | #wrong |")
        print("| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |")
        for r in sorted(models, key=lambda r: (r["model"], r["ranks"], r["compressor"])):
            wrong = "not checked" if r["wrong"] is None else r["wrong"]
            print(f"| {r['model']} | {r['compressor']} | {r['ranks']} | {r['count']:,} | "
                  f"{human_bytes(r['wire_bytes_per_rank'])} | {r['time_us'] / 1e6:.2f} | {link_rate(r)} | {wrong} |")
        print()


def label(r):
    return r["method"] + (f" ({r['note']})" if r.get("note") else "")


def ddp_plot(run, path):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in run["results"]:
        if "curve" not in r:
            continue
        ax.plot([c["time_s"] for c in r["curve"]], [100 * c["test_accuracy"] for c in r["curve"]], marker=".",
                label=label(r))
    rate = re.search(r"rate=(\S+)", run.get("link", ""))
    ax.set_title(f"DDP, {run['ranks']} ranks, {rate.group(1) if rate else run.get('link')} per rank: "
                 f"MLP 64-{run['hidden']}-{run['hidden']}-10")
    ax.set_xlabel("training time (s, slowest rank; evaluation excluded)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ddp_table(run):
    base = {r["method"]: r for r in run["results"] if "curve" in r}
    print(f"DDP comparison ({run['file']}): {run['ranks']} ranks, link {run.get('link')}, "
          f"{run['epochs']} epochs, batch {run['batch_per_rank']} per rank")
    print()
    print("| method | time per step (ms) | speedup vs its dense baseline | bytes per step per rank | test accuracy (%) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in run["results"]:
        if "skipped" in r or "failed" in r:
            why = f"skipped: {r['skipped']}" if "skipped" in r else f"failed: {r['failed']}"
            print(f"| {label(r)} | {why} | | | |")
            continue
        # 1-bit Adam is measured against Adam, everything else against SGD's allreduce.
        ref = base.get("adam" if r["method"] in ("adam", "gradcomm-onebit") else "allreduce")
        speedup = f"{ref['time_per_step_ms'] / r['time_per_step_ms']:.2f}x" if ref else "-"
        print(f"| {label(r)} | {r['time_per_step_ms']:.1f} | {speedup} | {human_bytes(r['bytes_per_step'])} | "
              f"{100 * r['test_accuracy']:.1f} |")
    print()


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    results, out = argv[1], argv[2]
    rows, ddp = load_results(results)
    if not rows and not ddp:
        print(f"plot.py: no gradcomm-bench JSON rows in {results}", file=sys.stderr)
        return 1
    os.makedirs(out, exist_ok=True)
    written = []
    if sweep_plot(rows, "time_us", "time per step (us, max over ranks)", os.path.join(out, "sweep_time.png"), True):
        written.append("sweep_time.png")
    if sweep_plot(rows, "busbw_gbps", "bus bandwidth (GB/s)", os.path.join(out, "sweep_busbw.png"), False):
        written.append("sweep_busbw.png")
    if model_plot(rows, os.path.join(out, "model_bytes.png")):
        written.append("model_bytes.png")
    for run in ddp:
        name = "ddp_accuracy.png" if len(ddp) == 1 else f"ddp_accuracy_{os.path.splitext(run['file'])[0]}.png"
        ddp_plot(run, os.path.join(out, name))
        written.append(name)
    tables(rows)
    for run in ddp:
        ddp_table(run)
    print(f"plot.py: wrote {', '.join(written) or 'nothing'} into {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
