"""The dense baseline as a gradcomm hook: the same Exchanger as the compressed hooks, with
gradcomm's DenseCompressor (an allreduce in float32, or float16 on the wire). Used to
measure what compression buys, and by the tests as the reference."""

from typing import Iterable, Optional, Tuple

import torch
import torch.distributed as dist

import gradcomm
from gradcomm.torch._exchange import CompressedHookState


class AllreduceState(CompressedHookState):
    """State of :func:`allreduce_hook`.

    Args:
        process_group: the group DDP runs on (default: the world group).
        fp16: send float16 on the wire (half the bytes; sums may lose precision).
        named_parameters: ``model.named_parameters()``, to key state by name.
        nonfinite: ``"error"`` (default), ``"skip_step"`` or ``"zero"`` for NaN/Inf.
        communicator: a gradcomm Communicator to use instead of the process group.
        bucket_bytes: summable payloads are fused into allreduces of up to this many bytes.
    """

    _kind = "allreduce"
    _kinds = {"fp16": bool}

    def __init__(self, process_group: Optional[dist.ProcessGroup] = None, fp16: bool = False,
                 named_parameters: Optional[Iterable[Tuple[str, torch.nn.Parameter]]] = None,
                 nonfinite: str = "error", communicator: Optional[gradcomm.Communicator] = None,
                 bucket_bytes: int = 4 << 20):
        super().__init__(process_group, named_parameters, nonfinite, communicator, bucket_bytes)
        self._keep_settings(locals())

    def _make_compressor(self) -> gradcomm.Compressor:
        return gradcomm.DenseCompressor("float16" if self.fp16 else "float32")


def allreduce_hook(state: AllreduceState, bucket) -> torch.futures.Future[torch.Tensor]:
    """Averages the bucket with one allreduce through gradcomm's dense kernels."""
    return state._exchange(bucket)
