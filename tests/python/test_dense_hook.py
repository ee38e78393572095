"""gradcomm's dense hook against DDP's own allreduce: the plumbing every compressed hook
shares (per-parameter state, bucket layout, futures, non-finite status) on a compressor
whose answer is known."""

import pytest
import torch
import torch.nn as nn

import gradcomm.torch as gct
from ddp_harness import run_ranks
from models import tiny_net, train_steps


def _run(rank, world, use_hook, fp16, steps):
    model = nn.parallel.DistributedDataParallel(tiny_net())
    if use_hook:
        model.register_comm_hook(gct.AllreduceState(fp16=fp16), gct.allreduce_hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return train_steps(model, opt, rank, steps)


@pytest.mark.parametrize("world", [2, 4])
def test_dense_hook_matches_ddp_allreduce_and_ranks_agree(world):
    ref = run_ranks(_run, world, False, False, 6)
    ours = run_ranks(_run, world, True, False, 6)
    for step in range(6):
        for r in range(1, world):
            assert torch.equal(ours[r][step], ours[0][step]), f"rank {r} differs at step {step}"
        torch.testing.assert_close(ours[0][step], ref[0][step], rtol=1e-5, atol=1e-6)


def test_dense_hook_fp16_wire_is_close():
    ref = run_ranks(_run, 2, False, False, 3)
    ours = run_ranks(_run, 2, True, True, 3)
    assert torch.equal(ours[0][-1], ours[1][-1])
    torch.testing.assert_close(ours[0][-1], ref[0][-1], rtol=1e-2, atol=1e-3)
    assert not torch.equal(ours[0][-1], ref[0][-1])  # the half wire did round something
