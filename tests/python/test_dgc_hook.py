"""dgc_hook under real DDP (gloo): the density-1 equivalence with momentum SGD, identical
ranks, sparse steps, and checkpoint/restore into fresh processes."""

import pytest
import torch
import torch.nn as nn

import gradcomm.torch as gct
from ddp_harness import run_ranks
from models import tiny_net, train_steps


def _dense_momentum(rank, world, steps, nesterov):
    model = nn.parallel.DistributedDataParallel(tiny_net())
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=nesterov)
    return train_steps(model, opt, rank, steps)


def _dgc(rank, world, steps, kwargs, ddp_kwargs=None):
    net = tiny_net()
    model = nn.parallel.DistributedDataParallel(net, **(ddp_kwargs or {}))
    state = gct.DGCState(named_parameters=net.named_parameters(), **kwargs)
    model.register_comm_hook(state, gct.dgc_hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    state.check_optimizer(opt)
    return train_steps(model, opt, rank, steps)


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("nesterov", [False, True])
def test_density_one_equals_momentum_sgd(world, nesterov):
    steps = 6
    ref = run_ranks(_dense_momentum, world, steps, nesterov)
    ours = run_ranks(_dgc, world, steps, dict(density=1.0, selection="exact", warmup=None,
                                              nesterov=nesterov))
    for step in range(steps):
        for r in range(world):
            assert torch.equal(ours[r][step], ours[0][step]), f"rank {r} differs at step {step}"
        torch.testing.assert_close(ours[0][step], ref[0][step], rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f"step {step}: {m}")


def test_density_one_with_gradient_as_bucket_view_and_small_buckets():
    """The hook writes the update into the bucket in place: with gradients that are views
    of the bucket, and with one parameter per bucket, nothing changes."""
    ref = run_ranks(_dense_momentum, 2, 4, False)
    ours = run_ranks(_dgc, 2, 4, dict(density=1.0, selection="exact", warmup=None),
                     dict(gradient_as_bucket_view=True, bucket_cap_mb=0.001))
    for step in range(4):
        torch.testing.assert_close(ours[0][step], ref[0][step], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("selection", ["sampled", "exact"])
def test_sparse_steps_identical_on_all_ranks(world, selection):
    steps = 8
    # dense_fallback off so every >1-D tensor really goes through the sparse allgather
    # even at 4 ranks; a warm-up that changes density mid-run changes the payload size;
    # fp16 values, clipping and Nesterov on the 4-rank runs.
    ours = run_ranks(_dgc, world, steps, dict(density=0.05, selection=selection,
                                              warmup=(0.5, 0.2), steps_per_epoch=3,
                                              dense_fallback=False, fp16=(world == 4),
                                              clip=(0.5 if world == 4 else None),
                                              nesterov=(world == 4)))
    for step in range(steps):
        for r in range(1, world):
            assert torch.equal(ours[r][step], ours[0][step]), f"rank {r} differs at step {step}"
    assert not torch.equal(ours[0][0], ours[0][-1])  # it trained


class _WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.unused, self.b = nn.Linear(16, 8), nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _unused(rank, world, ddp_kwargs):
    net = _WithUnused()
    model = nn.parallel.DistributedDataParallel(net, **ddp_kwargs)
    state = gct.DGCState(density=0.1, warmup=None, named_parameters=net.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gct.register_comm_hook(model, state, gct.dgc_hook, optimizer=opt)
    return train_steps(model, opt, rank, 4)


@pytest.mark.parametrize("ddp_kwargs", [dict(find_unused_parameters=True),
                                        dict(static_graph=True)])
def test_unused_parameters_and_static_graph(ddp_kwargs):
    ours = run_ranks(_unused, 2, ddp_kwargs)
    for step in range(4):
        assert torch.equal(ours[0][step], ours[1][step])


def _helper_checks_optimizer(rank, world):
    model = nn.parallel.DistributedDataParallel(tiny_net())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="must not add its own"):
        gct.register_comm_hook(model, gct.DGCState(), gct.dgc_hook, optimizer=opt)


def test_register_helper_checks_the_optimizer():
    run_ranks(_helper_checks_optimizer, 2)


def _warmup_warnings(rank, world, call_set_epoch, steps_per_epoch):
    import warnings

    net = tiny_net()
    model = nn.parallel.DistributedDataParallel(net)
    state = gct.DGCState(density=0.05, warmup_check_steps=3, steps_per_epoch=steps_per_epoch,
                         named_parameters=net.named_parameters())
    model.register_comm_hook(state, gct.dgc_hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Epochs of 2 steps: by the check at step 3 a caller of set_epoch is in epoch 1.
        train_steps(model, opt, rank, 8,
                    after_step=(lambda i: state.set_epoch((i + 1) // 2)) if call_set_epoch
                    else None)
    return [(w.category.__name__, str(w.message)) for w in caught
            if issubclass(w.category, gct.WarmupWarning)]


@pytest.mark.parametrize("world", [2, 4])
def test_warmup_warning_once_on_rank_0_when_set_epoch_is_never_called(world):
    results = run_ranks(_warmup_warnings, world, False, 0)
    assert len(results[0]) == 1, results[0]
    _, message = results[0][0]
    assert "3 steps and still in the first warm-up epoch" in message, message
    for words in ("sending 0.25 of every tensor instead of density 0.05", "set_epoch",
                  "steps_per_epoch", "warmup=None", "warmup_check_steps=0"):
        assert words in message, (words, message)
    assert all(r == [] for r in results[1:]), results  # rank 0 only


@pytest.mark.parametrize("call_set_epoch, steps_per_epoch", [(True, 0), (False, 2)],
                         ids=["set_epoch", "steps_per_epoch"])
def test_no_warmup_warning_when_the_warmup_advances(call_set_epoch, steps_per_epoch):
    for rank, caught in enumerate(run_ranks(_warmup_warnings, 2, call_set_epoch,
                                            steps_per_epoch)):
        assert caught == [], (rank, caught)
