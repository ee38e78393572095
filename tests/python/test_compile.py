"""The hooks under torch.compile (torch 2.x only): DDP(torch.compile(model)) calls them per
bucket as eager DDP does, and gives the same updates; torch.compile(DDP(model)) under
optimize_ddp="python_reducer" (compiled autograd) calls them per parameter with a
(grad, param) pair, which gradcomm refuses with one clear error naming the mode."""

import pytest
import torch
import torch.nn as nn

import gradcomm
import gradcomm.torch as gct
from ddp_harness import run_ranks
from models import batches, tiny_net

pytestmark = pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile needs torch 2.x")


def _steps(rank, world, mode):
    import torch._dynamo

    torch._dynamo.reset()
    # DDP reads the setting when it is built: python_reducer registers per-parameter
    # accumulate-grad hooks that call the comm hook with (grad, param).
    torch._dynamo.config.optimize_ddp = ("python_reducer" if mode == "python_reducer"
                                         else "ddp_optimizer")
    net = tiny_net()
    if mode == "compiled_module":
        model = nn.parallel.DistributedDataParallel(torch.compile(net, backend="aot_eager"))
        named = [(n.replace("_orig_mod.", ""), p) for n, p in model.module.named_parameters()]
    else:
        model = nn.parallel.DistributedDataParallel(net)
        named = list(net.named_parameters())
    state = gct.DGCState(density=0.05, warmup=None, named_parameters=named)
    model.register_comm_hook(state, gct.dgc_hook)
    if mode == "python_reducer":
        model = torch.compile(model, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    out = []
    try:
        for x, y in batches(rank, 3):
            opt.zero_grad()
            nn.CrossEntropyLoss()(model(x), y).backward()
            opt.step()
            out.append(torch.cat([p.detach().reshape(-1) for p in net.parameters()]))
    except Exception as error:  # the type as torch hands it over, and the words
        return type(error).__name__, isinstance(error, gradcomm.Error), str(error)
    return out


def test_compiled_module_inside_ddp_matches_eager():
    eager = run_ranks(_steps, 2, "eager")
    compiled = run_ranks(_steps, 2, "compiled_module")
    for step in range(3):
        assert torch.equal(compiled[0][step], compiled[1][step])
        assert torch.equal(compiled[0][step], eager[0][step]), f"step {step}"


def test_python_reducer_is_refused_with_a_clear_error_on_every_rank():
    for name, is_gradcomm, message in run_ranks(_steps, 2, "python_reducer"):
        assert is_gradcomm and name == "InvalidArgumentError", (name, message)
        assert "optimize_ddp='python_reducer' (compiled autograd)" in message, message
        assert "Use DDP(torch.compile(model))" in message, message
