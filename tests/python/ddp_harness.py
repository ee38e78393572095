"""Runs a function on N local ranks under torch.distributed (gloo) and returns what each
rank returned, in rank order. A rank that raises fails the run with its traceback; a job
that does not finish in time is killed (a hang is a failure, never a stuck CI). pg_timeout
is the process group's collective timeout: short for cases that could hang."""

from __future__ import annotations

import pickle
import queue
import time
import traceback

import torch.distributed as dist
import torch.multiprocessing as mp

from torch_ddp_digits import free_port, init_local_gloo  # examples/, on sys.path via conftest

try:
    # torch 2.x's DDP constructor imports torch._dynamo: seconds per forked rank, every job,
    # unless the parent has it already (the import starts no threads, so forking stays safe).
    import torch._dynamo  # noqa: F401
except ImportError:  # torch 1.x has none
    pass


class RankFailed(AssertionError):
    pass


def _entry(rank, world_size, port, fn, args, results, pg_timeout):
    try:
        init_local_gloo(rank, world_size, port, timeout_s=pg_timeout)
        try:
            value = fn(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        # Plain pickle bytes: torch's queue reducers would pass tensors as shared-memory
        # handles that die with this process.
        results.put((rank, True, pickle.dumps(value)))
    except BaseException:  # report everything, including assertion errors
        results.put((rank, False, traceback.format_exc()))


def run_ranks(fn, world_size: int, *args, timeout: float = 120.0, pg_timeout: float = 60.0,
              start_method: str = "fork"):
    """start_method "spawn" for ranks that use CUDA (a forked child cannot); `fn` must then
    be importable by name (a module-level function of a module on sys.path)."""
    ctx = mp.get_context(start_method)
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(r, world_size, port, fn, args, results, pg_timeout))
             for r in range(world_size)]
    for p in procs:
        p.start()
    # Drain results while the ranks run: a rank blocks on exit until its result is read.
    deadline = time.monotonic() + timeout
    collected = {}
    while len(collected) < world_size and time.monotonic() < deadline:
        try:
            rank, ok, value = results.get(timeout=0.2)
            collected[rank] = (ok, value)
        except queue.Empty:
            crashed = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
            if crashed and all(r not in collected for r in crashed):
                break
    for p in procs:
        p.join(max(0.0, min(5.0, deadline - time.monotonic())))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    failures = [f"rank {r}:\n{v}" for r, (ok, v) in sorted(collected.items()) if not ok]
    if failures:
        raise RankFailed("\n".join(failures))
    missing = [r for r in range(world_size) if r not in collected]
    if missing:
        codes = [procs[r].exitcode for r in missing]
        raise RankFailed(f"ranks {missing} gave no result within {timeout} s "
                         f"(exit codes {codes}; None: hung and killed)")
    if hung:
        raise RankFailed(f"ranks {hung} did not exit after reporting")
    return [pickle.loads(collected[r][1]) for r in range(world_size)]
