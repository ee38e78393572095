"""OneBitAdam + onebit_adam_hook under real DDP (gloo)."""

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import gradcomm.torch as gct
from ddp_harness import RankFailed, run_ranks
from models import attach_hook, batches, tiny_net, train_steps


def _torch_adam(rank, world, steps):
    model = nn.parallel.DistributedDataParallel(tiny_net())
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    return train_steps(model, opt, rank, steps)


def _onebit(rank, world, steps, options):
    net = tiny_net()
    model = nn.parallel.DistributedDataParallel(net)
    _, opt = attach_hook("onebit", net, model, **options)
    return train_steps(model, opt, rank, steps)


def test_warmup_is_adam():
    """Before the freeze (with bias correction, as torch's Adam has) it is Adam."""
    ref = run_ranks(_torch_adam, 2, 5)
    ours = run_ranks(_onebit, 2, 5, dict(freeze_step=100, bias_correction=True))
    for step in range(5):
        torch.testing.assert_close(ours[0][step], ref[0][step], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("precondition", [False, True])
def test_ranks_identical_through_the_freeze(world, precondition):
    steps = 8
    ours = run_ranks(_onebit, world, steps, dict(freeze_step=3, precondition=precondition))
    for step in range(steps):
        for r in range(1, world):
            assert torch.equal(ours[r][step], ours[0][step]), f"rank {r} differs at step {step}"
    assert not torch.equal(ours[0][3], ours[0][-1])  # compressed steps moved the parameters


def _count_collectives(rank, world, freeze):
    """Per stage (the `freeze` warm-up steps, then 4 compressed ones): gradcomm's collectives
    as the torch backend receives them, torch's all_reduce calls, and the bytes per step."""
    from gradcomm.torch._comm import TorchGroupBackend

    net = tiny_net()
    model = nn.parallel.DistributedDataParallel(net)
    _, opt = attach_hook("onebit", net, model, freeze_step=freeze)
    calls = {"allreduce": 0, "alltoall": 0, "allgather": 0, "torch all_reduce": 0}
    for name in ("allreduce", "alltoall", "allgather"):
        original = getattr(TorchGroupBackend, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)
        setattr(TorchGroupBackend, name, counted)
    torch_all_reduce = dist.all_reduce

    def counted_all_reduce(*args, **kwargs):  # DDP's own reducer too, if it ever ran
        calls["torch all_reduce"] += 1
        return torch_all_reduce(*args, **kwargs)
    dist.all_reduce = counted_all_reduce
    per_stage = []
    for stage_steps in (freeze, 4):
        for name in calls:
            calls[name] = 0
        sent = opt.bytes_sent
        train_steps(model, opt, rank, stage_steps)
        per_stage.append((dict(calls), (opt.bytes_sent - sent) / stage_steps))
    return per_stage


def test_after_freeze_only_compressed_momentum_crosses():
    (warm, warm_bytes), (frozen, frozen_bytes) = run_ranks(_count_collectives, 4, 2)[0]
    # Warm-up: dense allreduces and each step's layout agreement (one allgather), nothing else.
    assert warm["allreduce"] >= 2 and warm["alltoall"] == 0 and warm["allgather"] == 2, warm
    assert frozen["allreduce"] == 0 and frozen["torch all_reduce"] == 0, \
        f"dense allreduce after the freeze: {frozen}"
    assert frozen["alltoall"] == 4 and frozen["allgather"] == 4, frozen  # one per bucket-step
    # About 1/32 of the fp32 payload, plus a scale per chunk and padding to 8p elements.
    assert frozen_bytes < warm_bytes / 16, (frozen_bytes, warm_bytes)


def _step_without_hook(rank, world):
    model = nn.parallel.DistributedDataParallel(tiny_net())
    opt = gct.OneBitAdam(model.parameters(), freeze_step=1)
    train_steps(model, opt, rank, 2)


def test_frozen_step_without_the_hook_is_refused():
    with pytest.raises(RankFailed, match="register the optimizer as the hook's state"):
        run_ranks(_step_without_hook, 2)


def _against_native(rank, world, steps, options):
    import gradcomm._gradcomm as native
    from gradcomm.torch._comm import communicator

    net = tiny_net()
    model = nn.parallel.DistributedDataParallel(net)
    _, opt = attach_hook("onebit", net, model, **options)
    twin = tiny_net()  # the same initial parameters, trained by the C++ optimizer
    comm = communicator(None)
    cpp = native.NativeOneBitAdam(comm, [(n, p.detach()) for n, p in twin.named_parameters()],
                                  lr=2e-3, **options)
    loss_fn = nn.CrossEntropyLoss()
    gaps = []
    for x, y in batches(rank, steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        twin.zero_grad()
        loss_fn(twin(x), y).backward()
        cpp.step([p.grad for p in twin.parameters()])
        ours = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
        theirs = torch.cat([p.detach().reshape(-1) for p in twin.parameters()])
        gaps.append(float((ours - theirs).abs().max()))
    return gaps, cpp.frozen


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("precondition", [False, True])
def test_matches_the_cpp_optimizer(precondition, world):
    """The DDP form against gradcomm's C++ OneBitAdam stepping on its own (which is tested
    against the reference update): the hook's dense warm-up runs the same Exchanger layout
    and the update is the same C++ code, so the parameters are bitwise equal through the
    warm-up, the freeze and the compressed stage, on every rank."""
    results = run_ranks(_against_native, world, 8, dict(freeze_step=3,
                                                       precondition=precondition))
    for rank, (gaps, frozen) in enumerate(results):
        assert frozen, rank
        assert max(gaps) == 0.0, (rank, gaps)
