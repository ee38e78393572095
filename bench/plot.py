#!/usr/bin/env python3
"""Plots gradcomm-bench JSON results (as bench/netem/collect writes them) into PNGs and
prints the tables docs/benchmarks.md quotes.

    /usr/bin/python3 bench/plot.py RESULTS_DIR docs/img

Reads every *.json in RESULTS_DIR (each a list of gradcomm-bench rows) and writes:
- sweep_time.png: time per step vs message size, one panel per link, a line per compressor;
- sweep_busbw.png: bus bandwidth vs message size, the same layout;
- model_bytes.png: bytes each rank sends per step, per model and compressor.
Then prints markdown tables: the 100 MB rows and the model rows.
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


def load_rows(results_dir):
    rows = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        with open(path) as f:
            data = json.load(f)
        for row in data if isinstance(data, list) else [data]:
            row["file"] = os.path.basename(path)
            rows.append(row)
    return rows


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
    models = [r for r in rows if r.get("model")]
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
        print("| model | compressor | parameters | wire bytes per rank per step | time per step (s) | link | #wrong |")
        print("| --- | --- | ---: | ---: | ---: | --- | ---: |")
        for r in models:
            print(f"| {r['model']} | {r['compressor']} | {r['count']:,} | {human_bytes(r['wire_bytes_per_rank'])} | "
                  f"{r['time_us'] / 1e6:.2f} | {link_rate(r)} | {r['wrong']} |")
        print()


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    results, out = argv[1], argv[2]
    rows = load_rows(results)
    if not rows:
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
    tables(rows)
    print(f"plot.py: wrote {', '.join(written) or 'nothing'} into {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
