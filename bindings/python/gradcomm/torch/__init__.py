"""PyTorch DDP communication hooks over gradcomm's compressors.

    state = gradcomm.torch.DGCState(density=0.001)
    ddp_model.register_comm_hook(state, gradcomm.torch.dgc_hook)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=0.1)   # NO momentum: DGC has it

Hooks follow torch.distributed.algorithms.ddp_comm_hooks: ``hook(state, bucket)`` returns
a Future of a tensor shaped like ``bucket.buffer()`` holding the averaged update. State is
kept per parameter, so it survives DDP's bucket rebuild, and every state has
``state_dict()`` / ``load_state_dict()`` of this rank's shard. No libtorch is linked:
buffers cross into gradcomm's kernels through DLPack.
"""

from gradcomm.torch._exchange import CompressedHookState, register_comm_hook
from gradcomm.torch.dense import AllreduceState, allreduce_hook
from gradcomm.torch.dgc import PAPER_WARMUP, DGCState, WarmupWarning, dgc_hook
from gradcomm.torch.lgreco import DGC_DENSITIES, QUANT_BITS, LGreCoState, lgreco_hook
from gradcomm.torch.onebit import OneBitAdam, onebit_adam_hook
from gradcomm.torch.quant import QuantState, quant_hook

__all__ = [
    "AllreduceState",
    "CompressedHookState",
    "DGCState",
    "DGC_DENSITIES",
    "LGreCoState",
    "OneBitAdam",
    "PAPER_WARMUP",
    "QUANT_BITS",
    "QuantState",
    "WarmupWarning",
    "allreduce_hook",
    "dgc_hook",
    "lgreco_hook",
    "onebit_adam_hook",
    "quant_hook",
    "register_comm_hook",
]
