#!/usr/bin/env python3
"""A small CNN (or MLP) on scikit-learn's 8x8 digits, trained with PyTorch DDP (gloo) on N CPU
processes, with the gradients exchanged by one of gradcomm's communication hooks.

    .venv/bin/python examples/torch_ddp_digits.py --hook dgc --nproc 4
    .venv/bin/python examples/torch_ddp_digits.py --hook onebit-adam --nproc 4
    .venv/bin/python examples/torch_ddp_digits.py --hook lgreco --nproc 4
    .venv/bin/python examples/torch_ddp_digits.py --hook quant --model mlp --dtype bfloat16

Hooks:
  allreduce     gradcomm's dense allreduce (the baseline), SGD with momentum, or Adam
                with --optimizer adam; --fp16-wire true sends float16
  dgc           Deep Gradient Compression (--density, paper warm-up), plain SGD after it
  onebit-adam   1-bit Adam: Adam for --freeze-fraction of the steps, then 1-bit momentum
  lgreco        L-GreCo: per-layer bit widths (or DGC densities, --family dgc) chosen
                by dynamic programming under the error budget of the uniform --bits
  lgreco-uniform  the same compressor family at its uniform default (L-GreCo's reference)
  quant         k-bit quantization (--bits) with error feedback, SGD with momentum

--model mlp trains a fully connected net instead of the CNN; --dtype bfloat16 or float16
casts the model (parameters and gradients) to 16 bits: the hooks exchange 16-bit buckets.

Prints, per epoch: test accuracy, time per step, and bytes each rank sent per step (by
the ring-allreduce / allgather model that gradcomm's traffic counters use). The training
functions are importable: tests/python runs them.
"""

import argparse
import dataclasses
import datetime
import json
import os
import socket
import sys
import time
from typing import List, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

HOOKS = ("allreduce", "dgc", "onebit-adam", "lgreco", "lgreco-uniform", "quant")
MODELS = ("cnn", "mlp")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass
class Config:
    hook: str = "allreduce"
    optimizer: str = "sgd"  # allreduce only: sgd (with momentum) or adam
    epochs: int = 30
    batch: int = 16  # per rank
    lr: float = 0.05  # SGD; Adam and 1-bit Adam use adam_lr
    cosine: bool = False  # anneal the learning rate to 0 over the run (per step)
    adam_lr: float = 2e-3
    adam_eps: float = 1e-8  # Adam and 1-bit Adam
    momentum: float = 0.9
    density: float = 0.001  # DGC, and L-GreCo's uniform default in the dgc family
    bits: int = 4  # quant: bits per element; L-GreCo's uniform default in the quant family
    family: str = "quant"  # L-GreCo: quant (bit widths) or dgc (densities)
    replan_every: int = 50  # L-GreCo: steps between plans
    freeze_fraction: float = 0.2  # 1-bit Adam: share of the steps in warm-up
    precondition: bool = True  # 1-bit Adam: the variant that does not diverge on digits
    fp16_wire: bool = False  # allreduce: float16 on the wire
    model: str = "cnn"  # cnn or mlp
    dtype: str = "float32"  # the model's parameters and gradients: float32, bfloat16, float16
    # Arithmetic of the forward and backward ("": the parameters' dtype). float32 keeps
    # 16-bit parameters and gradients but computes in float32: for a torch without 16-bit
    # matrix products on the CPU (torch 1.13 has none for float16).
    compute_dtype: str = ""
    seed: int = 0


class DigitsCNN(nn.Module):
    """Layers of distinct shapes (for L-GreCo to choose between): two convolutions, two
    fully connected layers, about 38k parameters."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class DigitsMLP(nn.Module):
    """Three fully connected layers of distinct shapes, about 17k parameters. With
    `compute_dtype`, parameters and gradients keep their dtype while the arithmetic runs in
    `compute_dtype` (autograd casts the gradients back)."""

    def __init__(self, compute_dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.compute_dtype = compute_dtype
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def _linear(self, layer: nn.Linear, x):
        if self.compute_dtype is None:
            return layer(x)
        c = self.compute_dtype
        return F.linear(x.to(c), layer.weight.to(c), layer.bias.to(c))

    def forward(self, x):
        x = F.relu(self._linear(self.fc1, x.flatten(1)))
        x = F.relu(self._linear(self.fc2, x))
        return self._linear(self.fc3, x)


def make_model(cfg: "Config") -> nn.Module:
    """The Config's model, its parameters in cfg.dtype (torch.manual_seed first)."""
    if cfg.model not in MODELS:
        raise ValueError(f"unknown model {cfg.model!r}; expected one of {MODELS}")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {cfg.dtype!r}; expected one of {DTYPES}")
    if cfg.model == "cnn":
        if cfg.compute_dtype:
            raise ValueError("compute_dtype applies to the mlp model only")
        net = DigitsCNN()
    else:
        net = DigitsMLP(getattr(torch, cfg.compute_dtype) if cfg.compute_dtype else None)
    return net.to(getattr(torch, cfg.dtype))


def load_data(seed: int = 0):
    """The 1797 digits (the copy python3-sklearn ships: no download), scaled to [0, 1],
    split 80/20 with a fixed permutation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(y))
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


def wrap_ddp(net: nn.Module, **kwargs) -> nn.parallel.DistributedDataParallel:
    """DistributedDataParallel(net, **kwargs). torch 1.13's gloo cannot broadcast bfloat16
    ("Invalid scalar type"), so DDP cannot even be built around a bfloat16 model there; then
    DDP is built with its initial broadcast of rank 0's parameters done through float32
    copies instead (exact: every bfloat16 is a float32). The gradients never cross in
    bfloat16: gradcomm's hooks exchange float32 (or float16) payloads."""
    try:
        return nn.parallel.DistributedDataParallel(net, **kwargs)
    except RuntimeError as error:
        if "Invalid scalar type" not in str(error) or dist.get_backend() != "gloo":
            raise
    import torch.nn.parallel.distributed as ddp_module

    def sync_through_float32(module, process_group, broadcast_bucket_size, src,
                             params_and_buffers_to_ignore):
        states = list(module.named_parameters()) + list(module.named_buffers())
        for name, tensor in states:
            if name in params_and_buffers_to_ignore:
                continue
            wide = tensor.detach().float() if tensor.is_floating_point() else tensor.detach()
            dist.broadcast(wide, src, group=process_group)
            tensor.detach().copy_(wide)

    original = ddp_module._sync_module_states
    ddp_module._sync_module_states = sync_through_float32
    try:
        return nn.parallel.DistributedDataParallel(net, **kwargs)
    finally:
        ddp_module._sync_module_states = original


def _attach(cfg: Config, net: nn.Module, model, steps_total: int):
    """Registers the hook; returns (state with bytes_sent, optimizer, per-epoch callback)."""
    import gradcomm.torch as gct

    named = list(net.named_parameters())
    if cfg.hook == "allreduce":
        state = gct.AllreduceState(fp16=cfg.fp16_wire, named_parameters=named)
        model.register_comm_hook(state, gct.allreduce_hook)
        if cfg.optimizer == "adam":
            opt = torch.optim.Adam(model.parameters(), lr=cfg.adam_lr, eps=cfg.adam_eps)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
        return state, opt, None
    if cfg.hook == "dgc":
        state = gct.DGCState(density=cfg.density, momentum=cfg.momentum, named_parameters=named)
        model.register_comm_hook(state, gct.dgc_hook)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)  # no momentum: DGC has it
        state.check_optimizer(opt)
        return state, opt, state.set_epoch
    if cfg.hook == "onebit-adam":
        opt = gct.OneBitAdam(model.parameters(), lr=cfg.adam_lr, eps=cfg.adam_eps,
                             freeze_step=int(cfg.freeze_fraction * steps_total),
                             precondition=cfg.precondition)
        model.register_comm_hook(opt, gct.onebit_adam_hook)
        return opt, opt, None
    if cfg.hook in ("lgreco", "lgreco-uniform"):
        default = cfg.density if cfg.family == "dgc" else cfg.bits
        state = gct.LGreCoState(family=cfg.family, default=default, momentum=cfg.momentum,
                                replan_every=cfg.replan_every, named_parameters=named,
                                adaptive=cfg.hook == "lgreco")
        model.register_comm_hook(state, gct.lgreco_hook)
        if cfg.family == "dgc":
            opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
            state.check_optimizer(opt)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
        return state, opt, state.set_epoch
    if cfg.hook == "quant":
        state = gct.QuantState(bits=cfg.bits, named_parameters=named)
        model.register_comm_hook(state, gct.quant_hook)
        return state, torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum), None
    raise ValueError(f"unknown hook {cfg.hook!r}; expected one of {HOOKS}")


def evaluate(model: nn.Module, data) -> float:
    x, y = data
    with torch.no_grad():
        x = x.to(next(model.parameters()).dtype)
        return float((model(x).argmax(1) == y).float().mean()) * 100.0


def train(rank: int, world: int, cfg: Config, log: bool = False) -> dict:
    """Trains on this rank's shard of every epoch's permutation (torch.distributed must be
    initialized); returns per-epoch accuracy, time and bytes per step, final parameters."""
    train_set, test_set = load_data(cfg.seed)
    torch.manual_seed(cfg.seed)
    net = make_model(cfg)
    dtype = next(net.parameters()).dtype
    model = wrap_ddp(net)
    per_rank = len(train_set[1]) // world
    steps_per_epoch = per_rank // cfg.batch
    state, opt, on_epoch = _attach(cfg, net, model, steps_per_epoch * cfg.epochs)
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps_per_epoch * cfg.epochs)
                if cfg.cosine else None)
    history = []
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(cfg.epochs):
        if on_epoch is not None:
            on_epoch(epoch)
        order = torch.randperm(len(train_set[1]),
                               generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        mine = order[rank * per_rank:(rank + 1) * per_rank]
        sent_before, start = state.bytes_sent, time.perf_counter()
        model.train()
        for step in range(steps_per_epoch):
            idx = mine[step * cfg.batch:(step + 1) * cfg.batch]
            opt.zero_grad()
            loss_fn(model(train_set[0][idx].to(dtype)), train_set[1][idx]).backward()
            opt.step()
            if schedule is not None:
                schedule.step()
        seconds = time.perf_counter() - start
        model.eval()
        row = {"epoch": epoch, "accuracy": evaluate(net, test_set),
               "ms_per_step": 1000.0 * seconds / steps_per_epoch,
               "bytes_per_step": (state.bytes_sent - sent_before) / steps_per_epoch}
        history.append(row)
        if log and rank == 0:
            print(f"epoch {epoch:3d}  test accuracy {row['accuracy']:6.2f}%  "
                  f"{row['ms_per_step']:7.2f} ms/step  {row['bytes_per_step']:10.0f} B/step",
                  flush=True)
    params = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    return {"history": history, "params": params, "steps_per_epoch": steps_per_epoch}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for the rendezvous of local ranks."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_local_gloo(rank: int, world: int, port: int, timeout_s: float = 120.0) -> None:
    """One rank of a job on this machine: gloo over 127.0.0.1, one compute thread per
    rank (the ranks share the cores)."""
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))


def _worker(rank: int, world: int, port: int, cfg: Config, out: Optional[str]):
    init_local_gloo(rank, world, port)
    try:
        result = train(rank, world, cfg, log=True)
    finally:
        dist.destroy_process_group()
    if rank == 0 and out:
        with open(out, "w") as f:
            json.dump({"config": dataclasses.asdict(cfg), "history": result["history"]}, f,
                      indent=1)


def main(argv: Optional[List[str]] = None) -> int:
    defaults = Config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hook", choices=HOOKS, default=defaults.hook)
    parser.add_argument("--nproc", type=int, default=4, help="DDP processes (default 4)")
    parser.add_argument("--json", help="write rank 0's per-epoch table here")
    for field in dataclasses.fields(Config):
        if field.name == "hook":
            continue
        flag = "--" + field.name.replace("_", "-")
        if field.type in (bool, "bool"):
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes", "on"),
                                default=field.default, metavar="{true,false}")
        else:
            parser.add_argument(flag, type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    cfg = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
    port = free_port()
    print(f"digits {cfg.model.upper()} ({cfg.dtype}), {args.nproc} processes (gloo), hook "
          f"{cfg.hook}", flush=True)
    mp.spawn(_worker, args=(args.nproc, port, cfg, args.json), nprocs=args.nproc, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
