"""Save after N steps, restore into fresh processes, continue: the parameters must be
bitwise equal to an uninterrupted run, for every hook (each rank saves its own shard)."""

import os

import pytest
import torch
import torch.nn as nn

from ddp_harness import run_ranks
from models import attach_hook, tiny_net, train_steps

TOTAL, STOP = 7, 3
HOOKS = {
    "dgc": dict(density=0.05, warmup=(0.3,), steps_per_epoch=2, dense_fallback=False),
    # The sparse allreduce: its plan and regions travel in the shard.
    "dgc-reduce-scatter": dict(density=0.05, warmup=(0.3,), steps_per_epoch=2,
                               dense_fallback=False, exchange="reduce_scatter"),
    "dgc-fp16-exact": dict(density=0.1, fp16=True, selection="exact", warmup=None),
    # Saved before the freeze, resumed across it; and saved after it (errors in flight).
    "onebit-across-freeze": dict(freeze_step=STOP + 1),
    "onebit-frozen": dict(freeze_step=2, precondition=True, weight_decay=0.01),
    # Plans made before the save (applied and pending) and after the resume.
    "lgreco-quant": dict(family="quant", replan_every=2),
    "lgreco-dgc": dict(family="dgc", replan_every=3, candidates=(0.01, 0.05, 0.2, 0.5),
                       default=0.05),
}


def _train(rank, world, kind, options, ckpt_dir, phase):
    net = tiny_net()
    model = nn.parallel.DistributedDataParallel(net)
    state, opt = attach_hook(kind.split("-")[0], net, model, **options)
    path = os.path.join(ckpt_dir, f"rank{rank}.pt")
    if phase == "resume":
        saved = torch.load(path)
        net.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        if state is not opt:
            state.load_state_dict(saved["hook"])
        return train_steps(model, opt, rank, TOTAL - STOP, start=STOP)
    steps = TOTAL if phase == "full" else STOP
    history = train_steps(model, opt, rank, steps)
    if phase == "first":
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(),
                    "hook": None if state is opt else state.state_dict()}, path)
    return history


@pytest.mark.parametrize("kind", sorted(HOOKS))
def test_resume_is_bitwise_equal(kind, tmp_path):
    world = 2
    full = run_ranks(_train, world, kind, HOOKS[kind], str(tmp_path), "full")
    run_ranks(_train, world, kind, HOOKS[kind], str(tmp_path), "first")
    resumed = run_ranks(_train, world, kind, HOOKS[kind], str(tmp_path), "resume")
    for r in range(world):
        for i, params in enumerate(resumed[r]):
            assert torch.equal(params, full[r][STOP + i]), f"rank {r}, step {STOP + i}"
    assert torch.equal(resumed[0][-1], resumed[1][-1])
