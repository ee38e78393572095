#!/usr/bin/env python3
"""One DDP job, the same model, data and link for every method: what gradcomm's hooks buy
against what a PyTorch user would pick instead.

    bench/netem/run --rate 1gbit -- mpirun -np 4 --oversubscribe .venv/bin/python3 \\
        bench/ddp_compare.py --json out/ddp-1gbit.json

Each rank is an MPI process (rank and size from Open MPI's environment); the ranks meet
through a file store and train with torch.distributed over gloo (TCP), so under
bench/netem every rank's gradients cross its own emulated link. Methods, in this order:

  allreduce        torch DDP's built-in allreduce, SGD with momentum      (the baseline)
  fp16             torch's fp16_compress_hook, SGD with momentum
  powersgd-r1/r4   torch's PowerSGD hook, rank 1 and 4, error feedback and warm start
  gradcomm-dgc     gradcomm.torch.dgc_hook (DGC, paper warm-up), SGD without momentum
  adam             torch DDP's built-in allreduce, Adam                   (1-bit's baseline)
  gradcomm-onebit  gradcomm.torch.OneBitAdam + onebit_adam_hook
  gradcomm-lgreco  gradcomm.torch.lgreco_hook, where this gradcomm has it

A gradcomm method this installation lacks is reported as skipped, never silently dropped.
For each method: time per step (forward, backward, exchange, update; mean over the steps
after the first three, slowest rank), bytes each rank sends per step (counted at the
torch.distributed calls by the ring model of docs/benchmarks.md; for the built-in reducer,
which Python cannot see, 2(p-1)/p * 4 bytes per parameter), and test accuracy after every
epoch, against the training time so far.

Every method runs with one DDP bucket (see run_method for why), so no method overlaps its
exchange with the backward pass. The data is the handwritten digits set Debian's python3-sklearn ships (8x8 images, 10
classes), split 80/20 with a fixed seed and sharded by rank; the model is an MLP
64-H-H-10 (H = --hidden) so that the exchange, not the arithmetic, dominates a step.
"""

import argparse
import faulthandler
import json
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from gloo_job import init_gloo_job

METHODS = ["allreduce", "fp16", "powersgd-r1", "powersgd-r4", "gradcomm-dgc", "adam", "gradcomm-onebit",
           "gradcomm-lgreco"]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of: " + ", ".join(METHODS))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--hidden", type=int, default=1024, help="width of the two hidden layers (default 1024)")
    p.add_argument("--batch", type=int, default=32, help="batch per rank (default 32)")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default 0.05)")
    p.add_argument("--adam-lr", type=float, default=1e-3, help="Adam and 1-bit Adam learning rate (default 1e-3)")
    p.add_argument("--density", type=float, default=0.001, help="DGC density after warm-up (default 0.001)")
    p.add_argument("--adam-eps", type=float, default=1e-8,
                   help="eps of Adam and 1-bit Adam (default 1e-8, torch's; 1-bit Adam diverges with it "
                        "after the freeze on this model: docs/algorithms/onebit-adam.md)")
    p.add_argument("--onebit-freeze", type=float, default=0.2,
                   help="1-bit Adam: fraction of the steps run as plain Adam before the freeze (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--store", default="", help="file store path (default: one per MPI job under /tmp)")
    p.add_argument("--json", default="", help="write the results here (rank 0; rewritten after every method)")
    p.add_argument("--method-timeout", type=float, default=900,
                   help="seconds one method may take before every rank dumps its stacks and exits (default 900)")
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    if args.epochs < 1 or args.hidden < 1 or args.batch < 1:
        p.error("--epochs, --hidden and --batch must be positive")
    return args


# ---- bytes on the wire ----------------------------------------------------------------------

class WireCounter:
    """Counts what this rank hands to torch.distributed, by the ring model: allreduce
    2(p-1)/p * bytes, allgather (p-1) * bytes sent, alltoall (p-1)/p * bytes, broadcast
    the bytes on the root. Installed by wrapping the functions the hooks call."""

    def __init__(self, world_size, rank):
        self.p, self.rank, self.bytes = world_size, rank, 0
        self._originals = {}

    def install(self):
        def wrap(name, count):
            original = getattr(dist, name)
            self._originals[name] = original

            def counted(*args, **kwargs):
                self.bytes += count(*args, **kwargs)
                return original(*args, **kwargs)
            setattr(dist, name, counted)

        nbytes = lambda t: t.numel() * t.element_size()  # noqa: E731
        p = self.p
        wrap("all_reduce", lambda t, *a, **k: 2 * (p - 1) * nbytes(t) // p)
        wrap("all_gather", lambda outs, t, *a, **k: (p - 1) * nbytes(t))
        wrap("all_to_all_single", lambda out, t, *a, **k: (p - 1) * nbytes(t) // p)
        wrap("broadcast", lambda t, src, *a, **k: nbytes(t) * (p - 1) if src == self.rank else 0)

    def original(self, name):
        return self._originals[name]

    def uninstall(self):
        for name, original in self._originals.items():
            setattr(dist, name, original)


# ---- data and model -------------------------------------------------------------------------

def load_digits_split(seed):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.2, random_state=seed, stratify=y)
    as_t = lambda a, dt: torch.tensor(a, dtype=dt)  # noqa: E731
    return (as_t(x_train, torch.float32), as_t(y_train, torch.long), as_t(x_test, torch.float32),
            as_t(y_test, torch.long))


def make_model(hidden, seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


# ---- the methods ----------------------------------------------------------------------------

class Skip(Exception):
    """This method cannot run here (a gradcomm part not built); the message says why."""


def setup_method(name, ddp, args, steps_per_epoch, total_steps):
    """Registers the method's hook on `ddp` and returns (optimizer, builtin_allreduce)."""
    params = ddp.parameters()
    sgd = lambda momentum: torch.optim.SGD(params, lr=args.lr, momentum=momentum)  # noqa: E731
    if name == "allreduce":
        return sgd(0.9), True
    if name == "adam":
        return torch.optim.Adam(params, lr=args.adam_lr, eps=args.adam_eps), True
    if name == "fp16":
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
        return sgd(0.9), False
    if name.startswith("powersgd-r"):
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as ps
        state = ps.PowerSGDState(process_group=None, matrix_approximation_rank=int(name[len("powersgd-r"):]),
                                 start_powerSGD_iter=2, use_error_feedback=True, warm_start=True,
                                 random_seed=args.seed)
        ddp.register_comm_hook(state, ps.powerSGD_hook)
        return sgd(0.9), False
    try:
        import gradcomm.torch as gt
    except ImportError as e:
        raise Skip(f"the gradcomm Python package is not importable ({e}); see bindings/python/README.md")
    if name == "gradcomm-dgc":
        state = gt.DGCState(density=args.density, momentum=0.9, steps_per_epoch=steps_per_epoch,
                            named_parameters=ddp.module.named_parameters())
        ddp.register_comm_hook(state, gt.dgc_hook)
        return sgd(0.0), False  # DGC's momentum lives in the hook
    if name == "gradcomm-onebit":
        if not hasattr(gt, "OneBitAdam"):
            raise Skip("this gradcomm has no OneBitAdam yet")
        opt = gt.OneBitAdam(params, lr=args.adam_lr, eps=args.adam_eps,
                            freeze_step=max(1, int(args.onebit_freeze * total_steps)), precondition=True)
        ddp.register_comm_hook(opt, gt.onebit_adam_hook)
        return opt, False
    if name == "gradcomm-lgreco":
        if not hasattr(gt, "lgreco_hook"):
            raise Skip("this gradcomm has no lgreco_hook yet")
        state = gt.LGreCoState(named_parameters=ddp.module.named_parameters())
        ddp.register_comm_hook(state, gt.lgreco_hook)
        return sgd(0.0), False
    raise AssertionError(name)


def max_over_ranks(value, all_reduce=None):
    """The maximum over ranks; `all_reduce` lets a caller bypass the WireCounter."""
    t = torch.tensor([float(value)], dtype=torch.float64)
    (all_reduce or dist.all_reduce)(t, op=dist.ReduceOp.MAX)
    return t.item()


def run_method(name, args, data, rank, world):
    x_train, y_train, x_test, y_test = data
    shard_x, shard_y = x_train[rank::world], y_train[rank::world]
    # Every rank takes the same number of steps (the smallest shard's), or DDP would hang.
    steps_per_epoch = (len(x_train) // world) // args.batch
    total_steps = steps_per_epoch * args.epochs
    model = make_model(args.hidden, args.seed)
    # One DDP bucket for every method: torch 1.13's PowerSGD hook waits on a nested
    # allreduce inside a future callback, which holds a gloo worker thread; with two
    # buckets in flight both threads block and the job deadlocks (seen here). The model
    # (4.5 MB at the default width) fits one 64 MB bucket.
    dist._DEFAULT_FIRST_BUCKET_BYTES = 64 << 20
    ddp = DDP(model, bucket_cap_mb=64)
    optimizer, builtin = setup_method(name, ddp, args, steps_per_epoch, total_steps)
    counter = WireCounter(world, rank)
    counter.install()
    n_params = sum(p.numel() for p in model.parameters())
    builtin_bytes = 2 * (world - 1) * 4 * n_params // world if builtin else 0
    step_times, curve, train_time, step = [], [], 0.0, 0
    counted_from = 3  # DDP rebuilds its buckets after the first step; hooks warm up
    bytes_at = 0
    generator = torch.Generator().manual_seed(args.seed * 1000 + rank)
    dist.barrier()
    for epoch in range(args.epochs):
        order = torch.randperm(len(shard_x), generator=generator)
        for i in range(steps_per_epoch):
            idx = order[i * args.batch:(i + 1) * args.batch]
            if step == counted_from:
                bytes_at = counter.bytes
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(ddp(shard_x[idx]), shard_y[idx])
            loss.backward()
            optimizer.step()
            elapsed = time.perf_counter() - start
            train_time += elapsed
            if step >= counted_from:
                step_times.append(elapsed)
            step += 1
        # Bookkeeping, not the method's traffic: past the counter.
        curve.append([max_over_ranks(train_time, counter.original("all_reduce")), accuracy(model, x_test, y_test),
                      loss.item()])
    counter.uninstall()
    timed = max(1, len(step_times))
    return {
        "method": name,
        "time_per_step_ms": 1e3 * max_over_ranks(sum(step_times) / timed),
        "bytes_per_step": int(max_over_ranks((counter.bytes - bytes_at) / timed + builtin_bytes)),
        "test_accuracy": curve[-1][1],
        "final_loss": curve[-1][2],
        "train_time_s": curve[-1][0],
        "steps": step,
        "curve": [{"time_s": t, "test_accuracy": a} for t, a, _ in curve],
    }


def main(argv):
    args = parse_args(argv)
    torch.set_num_threads(1)
    rank, world, store = init_gloo_job("gcddp", args.store, timeout_s=300)
    try:
        data = load_digits_split(args.seed)
        link = os.environ.get("GRADCOMM_NETEM_LINK", "unshaped")
        if rank == 0:
            print(f"ddp_compare: {world} ranks, link {link}, MLP 64-{args.hidden}-{args.hidden}-10, "
                  f"{args.epochs} epochs, batch {args.batch} per rank", flush=True)
        results = []
        for name in args.methods:
            # A hang must end the job with the stacks that show where, not stall a benchmark.
            faulthandler.dump_traceback_later(args.method_timeout, exit=True)
            try:
                r = run_method(name, args, data, rank, world)
            except Skip as why:
                r = {"method": name, "skipped": str(why)}
            except RuntimeError as e:
                # gradcomm raises on every rank alike (a non-finite or corrupt payload is seen
                # by all), so the job can go on to the next method; a rank that did not
                # raise would hang, and the method timeout ends that.
                r = {"method": name, "failed": str(e).strip().splitlines()[0]}
                dist.barrier()
            if name == "gradcomm-onebit":
                r["note"] = f"freeze after {100 * args.onebit_freeze:g}% of the steps"
            elif name == "gradcomm-dgc":
                r["note"] = f"density {args.density:g} after the paper's 4-epoch warm-up"
            faulthandler.cancel_dump_traceback_later()
            results.append(r)
            if rank == 0:
                if "skipped" in r or "failed" in r:
                    print(f"  {name:16s} {'skipped' if 'skipped' in r else 'FAILED'}: "
                          f"{r.get('skipped', r.get('failed'))}", flush=True)
                else:
                    print(f"  {name:16s} {r['time_per_step_ms']:9.1f} ms/step {r['bytes_per_step']:12,d} B/step "
                          f"test accuracy {100 * r['test_accuracy']:5.1f}%", flush=True)
            if rank == 0 and args.json:
                with open(args.json, "w") as f:
                    json.dump({"ranks": world, "link": link, "hidden": args.hidden, "epochs": args.epochs,
                               "batch_per_rank": args.batch, "results": results}, f, indent=1)
    finally:
        dist.destroy_process_group()
        if rank == 0:
            try:
                os.remove(store)  # normally gone already: the last FileStore user deletes it
            except FileNotFoundError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
