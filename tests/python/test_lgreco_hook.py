"""lgreco_hook under real DDP (gloo): every rank holds the same plan and the same
parameters after every step, plans actually change settings, and the uniform baseline
never re-plans."""

import pytest
import torch
import torch.nn as nn

from ddp_harness import run_ranks
from models import attach_hook, tiny_net, train_steps

FAMILIES = {
    "quant": dict(family="quant", replan_every=3),
    # Densities large enough that a 3k-parameter net has choices to make.
    "dgc": dict(family="dgc", replan_every=3, candidates=(0.01, 0.05, 0.2, 0.5), default=0.05),
}


def _run(rank, world, options, steps):
    net = tiny_net()
    model = nn.parallel.DistributedDataParallel(net)
    state, opt = attach_hook("lgreco", net, model, **options)
    plans = []
    history = train_steps(model, opt, rank, steps,
                          after_step=lambda i: plans.append(state.planned_settings()))
    return history, plans, state.replans, state.bytes_sent, state.last_plan


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_same_plan_and_parameters_on_every_rank(world, family):
    steps = 9
    results = run_ranks(_run, world, FAMILIES[family], steps)
    history0, plans0, replans0, _, last0 = results[0]
    assert replans0 == 3
    for r, (history, plans, replans, _, last) in enumerate(results):
        assert plans == plans0, f"rank {r} holds another plan"
        assert last == last0
        for step in range(steps):
            assert torch.equal(history[step], history0[step]), f"rank {r} differs at step {step}"
    default = FAMILIES[family].get("default", 4)
    assert all(v == default for v in plans0[0].values())  # the default until the first plan
    assert any(v != default for plan in plans0 for v in plan.values()), plans0  # plans act
    assert last0["error"] <= last0["budget"] * (1 + 1e-9)


def test_uniform_baseline_never_replans_and_sends_more():
    steps = 9
    adaptive = run_ranks(_run, 2, FAMILIES["quant"], steps)
    uniform = run_ranks(_run, 2, dict(FAMILIES["quant"], adaptive=False), steps)
    assert uniform[0][2] == 0
    assert all(v == 4 for v in uniform[0][1][-1].values())
    assert adaptive[0][3] < uniform[0][3], (adaptive[0][3], uniform[0][3])
