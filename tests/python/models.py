"""Small models and data for the step-by-step tests (the accuracy tests use the CNN of
examples/torch_ddp_digits.py)."""

from __future__ import annotations

import torch
import torch.nn as nn


def tiny_net(seed: int = 0) -> nn.Module:
    """Layers of several shapes, 2-D and 1-D, about 3k parameters: enough for DGC to pick
    sparse and dense layers, small enough that a step is milliseconds."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.LayerNorm(32),
                         nn.ReLU(), nn.Linear(32, 4))


def batches(rank: int, steps: int, batch: int = 8, seed: int = 1):
    """Different data on every rank (so averaging matters), the same on every run."""
    g = torch.Generator().manual_seed(seed * 1000 + rank)
    for _ in range(steps):
        x = torch.randn(batch, 16, generator=g)
        y = torch.randint(0, 4, (batch,), generator=g)
        yield x, y


def cpu_float16_matmul() -> bool:
    """Whether this torch multiplies float16 matrices on the CPU (torch 1.13 does not)."""
    try:
        torch.ones(2, 2, dtype=torch.float16) @ torch.ones(2, 2, dtype=torch.float16)
        return True
    except RuntimeError:
        return False


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def train_steps(model, optimizer, rank, steps, after_step=None, seed=1, start=0):
    """Runs `steps` steps of cross-entropy training on `batches(rank)`, skipping the first
    `start` batches (for resumed runs); returns the flat parameters after every step."""
    history = []
    loss_fn = nn.CrossEntropyLoss()
    for i, (x, y) in enumerate(batches(rank, start + steps, seed=seed)):
        if i < start:
            continue
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
        history.append(flat_params(model))
        if after_step is not None:
            after_step(i)
    return history


def attach_hook(kind: str, net: nn.Module, model, **options):
    """Registers gradcomm's hook `kind` on the DDP `model` wrapping `net`; returns
    (hook state, optimizer). The optimizer is what the hook expects after it."""
    import gradcomm.torch as gct

    named = list(net.named_parameters())
    if kind == "allreduce":
        state = gct.AllreduceState(named_parameters=named, **options)
        model.register_comm_hook(state, gct.allreduce_hook)
        return state, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if kind == "dgc":
        state = gct.DGCState(named_parameters=named, **options)
        model.register_comm_hook(state, gct.dgc_hook)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        state.check_optimizer(opt)
        return state, opt
    if kind == "lgreco":
        state = gct.LGreCoState(named_parameters=named, **options)
        model.register_comm_hook(state, gct.lgreco_hook)
        if state.family == "dgc":
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
            state.check_optimizer(opt)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return state, opt
    if kind == "quant":
        state = gct.QuantState(named_parameters=named, **options)
        model.register_comm_hook(state, gct.quant_hook)
        return state, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if kind == "onebit":
        opt = gct.OneBitAdam(model.parameters(), **{"lr": 2e-3, **options})
        model.register_comm_hook(opt, gct.onebit_adam_hook)
        return opt, opt
    raise ValueError(kind)
