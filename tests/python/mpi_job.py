"""One rank of an mpirun job (started by test_mpi.py): DDP on gloo for its own
bookkeeping, the gradcomm hooks' collectives on gradcomm.MpiCommunicator. Checks that
every hook gives the same parameters over MPI as over the process group, and that DGC
at density 1 is momentum SGD. Exits non-zero on a failure."""

import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "examples"))

import gradcomm  # noqa: E402
import gradcomm.torch as gct  # noqa: E402
from models import tiny_net, train_steps  # noqa: E402
from torch_ddp_digits import init_local_gloo  # noqa: E402


def run(kind, communicator):
    net = tiny_net()
    model = nn.parallel.DistributedDataParallel(net)
    named = list(net.named_parameters())
    if kind == "dense-momentum":
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    elif kind == "dgc":
        state = gct.DGCState(density=1.0, selection="exact", warmup=None, named_parameters=named,
                             communicator=communicator)
        model.register_comm_hook(state, gct.dgc_hook)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
    elif kind == "onebit":
        opt = gct.OneBitAdam(model.parameters(), lr=2e-3, freeze_step=2,
                             communicator=communicator)
        model.register_comm_hook(opt, gct.onebit_adam_hook)
    else:
        state = gct.LGreCoState(family="quant", replan_every=2, named_parameters=named,
                                communicator=communicator)
        model.register_comm_hook(state, gct.lgreco_hook)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return train_steps(model, opt, rank, 5)


rank, world = int(os.environ["OMPI_COMM_WORLD_RANK"]), int(os.environ["OMPI_COMM_WORLD_SIZE"])
init_local_gloo(rank, world, int(os.environ["GRADCOMM_TEST_PORT"]))
mpi = gradcomm.MpiCommunicator()
assert (mpi.rank, mpi.size) == (rank, world)
reference = run("dense-momentum", None)
for kind in ("dgc", "onebit", "lgreco"):
    over_mpi, over_gloo = run(kind, mpi), run(kind, None)
    for step, (a, b) in enumerate(zip(over_mpi, over_gloo)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5,
                                   msg=lambda m: f"{kind} step {step}: {m}")
    if kind == "dgc":
        for a, b in zip(over_mpi, reference):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
assert mpi.collectives > 0
print(f"rank {rank}: hooks over MpiCommunicator match the process group", flush=True)
