#!/usr/bin/env python3
"""How long small collectives take over torch.distributed's gloo: the figures behind
gradcomm.torch's TorchGroupBackend.SMALL_ALLGATHER_BYTES (an allgather up to that many
received bytes travels as one alltoall round) and the per-step layout agreement.

    bench/netem/run --rate 1gbit -- mpirun --allow-run-as-root --oversubscribe -np 4 \\
        .venv/bin/python3 bench/gloo_small_collectives.py

For each block size (bytes each rank contributes), the microseconds per call of
`all_gather` (gloo passes the blocks around a ring), `all_to_all_single` of the block
repeated for every rank (what the backend sends instead; the same result), and, for the
smallest size, `all_reduce` and `barrier`. Each is timed in `--repeats` batches of calls,
alternating, and printed per batch, with the ratio of the medians alltoall / allgather
from the same run. Rank 0 prints.
"""

import argparse
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist

from gloo_job import init_gloo_job


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="16,1024,12288,65536,262144,1048576",
                   help="block sizes in bytes, comma-separated (multiples of 4)")
    p.add_argument("--repeats", type=int, default=4, help="batches per collective and size")
    p.add_argument("--bytes-per-batch", type=int, default=2_000_000,
                   help="calls per batch: this many bytes per rank, 10 to 200 calls")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rank, world, _ = init_gloo_job("gcsmall")
    sizes = [int(s) for s in args.sizes.split(",")]
    if rank == 0:
        print(f"gloo_small_collectives: {world} ranks, link {os.environ.get('GRADCOMM_NETEM_LINK', 'unshaped')}",
              flush=True)
        print(f"{'block bytes':>12s} {'collective':>10s}  us per call, per batch{'':20s} alltoall/allgather")
    for size in sizes:
        n = max(size // 4, 1)
        block = torch.full((n,), float(rank))
        gathered = torch.empty(world * n)
        parts = list(gathered.view(world, n).unbind(0))
        repeated = block.repeat(world)
        runs = {
            "allgather": lambda: dist.all_gather(parts, block, async_op=True).wait(),
            "alltoall": lambda: dist.all_to_all_single(gathered, repeated, async_op=True).wait(),
        }
        if size == sizes[0]:
            small = torch.zeros(n, dtype=torch.int64)
            runs["allreduce"] = lambda: dist.all_reduce(small, op=dist.ReduceOp.MAX, async_op=True).wait()
            runs["barrier"] = lambda: dist.barrier()
        calls = max(10, min(200, args.bytes_per_batch // max(size, 1)))
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                dist.barrier()
                start = time.perf_counter()
                for _ in range(calls):
                    run()
                times[name].append((time.perf_counter() - start) / calls * 1e6)
        expected = torch.arange(world, dtype=torch.float32).repeat_interleave(n)
        if not torch.equal(gathered, expected):
            raise SystemExit(f"rank {rank}: the alltoall of {size} bytes did not gather the blocks")
        if rank == 0:
            ratio = statistics.median(times["alltoall"]) / statistics.median(times["allgather"])
            for name, ts in times.items():
                shown = " ".join(f"{t:8.0f}" for t in ts)
                tail = f"{ratio:8.2f}" if name == "alltoall" else ""
                print(f"{size:12d} {name:>10s}  {shown}  {tail}", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
