"""Misuse gives a clear Python exception on every rank, never a crash or a hang."""

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import gradcomm
import gradcomm.torch as gct
from ddp_harness import RankFailed, run_ranks
from models import batches, tiny_net


# ---- buffers at the binding boundary (one process) --------------------------------------
def _dense_compressor(n=12):
    c = gradcomm.DenseCompressor()
    c.setup([gradcomm.LayerSpec("w", n, 2)], 2, 0)
    return c


@pytest.mark.parametrize("grad, message", [
    (torch.zeros(12, dtype=torch.float64), "unsupported dtype float64"),
    (torch.zeros(12, dtype=torch.int32), "expected dtype float32, got int32"),
    (torch.zeros(4, 3).t(), "expected a contiguous buffer"),
    (torch.zeros(24)[::2], "expected a contiguous buffer"),
    (torch.zeros(12, requires_grad=True), "require gradient"),
    ([0.0] * 12, "expected a tensor or array"),
    (torch.zeros(11), "expected 12 elements|layer has 12 elements"),
])
def test_bad_buffers_raise_value_errors(grad, message):
    with pytest.raises(gradcomm.InvalidArgumentError, match=message) as info:
        _dense_compressor().encode(0, grad, torch.zeros(12))
    assert isinstance(info.value, ValueError) and info.value.code in ("invalid argument",
                                                                     "size mismatch")


def test_numpy_and_torch_buffers_are_read_in_place():
    c = _dense_compressor(4)
    grad = np.arange(4, dtype=np.float32)
    payload = torch.zeros(4)
    assert c.encode(0, grad, payload) == 0
    out = np.zeros(4, dtype=np.float32)
    c.decode(0, payload, out)  # numpy output written in place
    np.testing.assert_array_equal(out, grad / 2)
    assert gradcomm.describe_buffer(torch.zeros(3, 5)[1]) == "float32[5] on cpu"


@pytest.mark.parametrize("make, message", [
    (lambda: gct.DGCState(density=0.0), "density must be in"),
    (lambda: gct.DGCState(selection="topk"), "selection must be"),
    (lambda: gct.DGCState(momentum=1.5), "momentum"),
    (lambda: gct.DGCState(nonfinite="ignore"), "nonfinite must be one of"),
    (lambda: gct.LGreCoState(family="lowrank"), "family must be"),
    (lambda: gct.LGreCoState(family="quant", default=7),
     "the default 7 is not among the bit widths"),
    # The quant family does not use momentum; a NaN is refused all the same.
    (lambda: gct.LGreCoState(family="quant", momentum=float("nan")),
     "LGreCoState: momentum must be a finite number, got nan"),
    (lambda: gct.OneBitAdam([torch.zeros(2, requires_grad=True)], betas=(0.9, 1.0)),
     r"beta2 1 must be in \[0, 1\)"),
])
def test_bad_settings_are_refused_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_dgc_refuses_an_optimizer_with_momentum():
    params = list(tiny_net().parameters())
    state = gct.DGCState()
    state.check_optimizer(torch.optim.SGD(params, lr=0.1))
    with pytest.raises(ValueError, match="momentum=0.9"):
        state.check_optimizer(torch.optim.SGD(params, lr=0.1, momentum=0.9))
    with pytest.raises(ValueError, match="not Adam"):
        state.check_optimizer(torch.optim.Adam(params))


# ---- under DDP ----------------------------------------------------------------------------
def _backward_once(model):
    x, y = next(batches(dist.get_rank(), 1))
    nn.CrossEntropyLoss()(model(x.to(next(model.parameters()).dtype)), y).backward()


def _float64_model(rank, world):
    model = nn.parallel.DistributedDataParallel(tiny_net().double())
    model.register_comm_hook(gct.DGCState(), gct.dgc_hook)
    _backward_once(model)


def test_wrong_gradient_dtype_is_a_clear_error():
    with pytest.raises(RankFailed, match="take float32, float16, bfloat16 gradients, the bucket holds torch.float64"):
        run_ranks(_float64_model, 2)


def _subgroup_hook(rank, world, use_helper, kind):
    small = dist.new_group([0, 1])  # every rank must call new_group
    model = nn.parallel.DistributedDataParallel(tiny_net())
    if kind == "dgc":
        state, hook = gct.DGCState(process_group=small), gct.dgc_hook
    else:
        state = gct.OneBitAdam(model.parameters(), process_group=small)
        hook = gct.onebit_adam_hook
    try:
        if use_helper:
            gct.register_comm_hook(model, state, hook)
        else:
            model.register_comm_hook(state, hook)
            _backward_once(model)
    except (ValueError, RuntimeError) as e:
        return str(e)
    return None


@pytest.mark.parametrize("use_helper", [False, True])
@pytest.mark.parametrize("kind", ["dgc", "onebit"])
def test_hook_group_of_another_size_fails_on_every_rank(use_helper, kind):
    messages = run_ranks(_subgroup_hook, 4, use_helper, kind, timeout=60)
    for rank, message in enumerate(messages):
        assert message is not None, f"rank {rank} went on"
        expected = "has 2 ranks but DDP's has 4" if rank < 2 else f"rank {rank} is not a member"
        assert expected in message, message


def _nonfinite(rank, world, policy):
    model = nn.parallel.DistributedDataParallel(tiny_net())
    state = gct.DGCState(density=0.1, warmup=None, nonfinite=policy)
    model.register_comm_hook(state, gct.dgc_hook)
    x, y = next(batches(rank, 1))
    if rank == world - 1:
        x[0, 0] = float("nan")  # one rank's gradient turns NaN
    try:
        nn.CrossEntropyLoss()(model(x), y).backward()
    except RuntimeError as e:
        return "raised: " + str(e)
    grads = [p.grad.clone() for p in model.parameters()]
    return ([torch.equal(g, torch.zeros_like(g)) for g in grads],
            all(bool(torch.isfinite(g).all()) for g in grads))


def test_nonfinite_error_policy_raises_on_every_rank():
    for message in run_ranks(_nonfinite, 2, "error"):
        assert message.startswith("raised:") and "1 of 2 ranks met NaN or Inf" in message, message


def test_nonfinite_skip_step_gives_a_zero_update_everywhere():
    for zeros, _ in run_ranks(_nonfinite, 2, "skip_step"):
        assert all(zeros)


def test_nonfinite_zero_policy_goes_on_with_finite_updates():
    for zeros, finite in run_ranks(_nonfinite, 2, "zero"):
        assert finite and not all(zeros)


def _load_mismatched(rank, world):
    net = tiny_net()
    model = nn.parallel.DistributedDataParallel(net)
    state = gct.DGCState(density=0.1, warmup=None, named_parameters=net.named_parameters())
    model.register_comm_hook(state, gct.dgc_hook)
    _backward_once(model)
    saved = state.state_dict()
    errors = []
    everyone = [None] * world
    dist.all_gather_object(everyone, saved)
    other_rank = everyone[(rank + 1) % world]  # another rank's real shard
    other_density = gct.DGCState(density=0.2, warmup=None)
    other_exchange = gct.DGCState(density=0.1, warmup=None, exchange="reduce_scatter")
    for target, shard in ((state, other_rank), (other_density, saved),
                          (gct.LGreCoState(), saved), (other_exchange, saved)):
        try:
            target.load_state_dict(shard)
            errors.append(None)
        except (ValueError, gradcomm.Error) as e:
            errors.append(str(e))
    onebit = gct.OneBitAdam(model.parameters())
    try:
        onebit.load_state_dict(torch.optim.Adam(model.parameters()).state_dict())
        errors.append(None)
    except ValueError as e:
        errors.append(str(e))
    return errors


def test_loading_another_ranks_or_settings_shard_is_refused():
    for rank, errors in enumerate(run_ranks(_load_mismatched, 2)):
        wrong_rank, wrong_settings, wrong_kind, wrong_exchange, not_onebit = errors
        assert wrong_rank and (f"this is the shard of rank {(rank + 1) % 2}, not of rank {rank}"
                               in wrong_rank), wrong_rank
        assert wrong_settings and "settings differ" in wrong_settings
        assert wrong_kind and "a 'dgc' state, expected 'lgreco'" in wrong_kind
        assert wrong_exchange and ("saved with exchange='compressor', this state has "
                                   "exchange='reduce_scatter'") in wrong_exchange, wrong_exchange
        assert not_onebit and "not a OneBitAdam state" in not_onebit
