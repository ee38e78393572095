"""k-bit quantization (max-min per bucket, CGX style) as a DDP communication hook.

    state = QuantState(bits=4, named_parameters=model.named_parameters())
    ddp_model.register_comm_hook(state, quant_hook)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=0.1, momentum=0.9)  # any optimizer

Each rank quantizes every tensor with more than one dimension to ``bits`` bits per
element, one (min, unit) pair per ``bucket_size`` elements, keeping what the codes could
not carry in a per-tensor residual that the next step adds back (error feedback, on by
default). The codes are allgathered and every rank dequantizes and averages all of them in
rank order, so every rank gets bitwise the same update: the averaged gradient, which any
optimizer takes. Tensors with one dimension (biases, norms) are allreduced in float32.
"""

from typing import Iterable, Optional, Tuple

import torch
import torch.distributed as dist

import gradcomm
from gradcomm._gradcomm import QuantizeCompressor
from gradcomm.torch._exchange import CompressedHookState


class QuantState(CompressedHookState):
    """State of :func:`quant_hook`.

    Args:
        process_group: the group DDP runs on (default: the world group).
        bits: bits per element on the wire, 1 to 8. Default 4.
        bucket_size: elements sharing one (min, unit) pair; a multiple of 8. Default 512.
        rounding: ``"nearest"`` (default) or ``"stochastic"`` (unbiased, from a
            counter-based generator of seed, rank, tensor, step and index).
        error_feedback: keep what quantization lost and add it to the next step's
            gradient (default True: nothing is lost over time).
        quantize_1d: also quantize tensors with one dimension (default False: they are
            allreduced in float32).
        seed: seed of the stochastic rounding.
        named_parameters, nonfinite, communicator, bucket_bytes: as in
            :class:`gradcomm.torch.DGCState`.
    """

    _kind = "quant"
    _kinds = {"bits": int, "bucket_size": int, "rounding": ("nearest", "stochastic"),
              "error_feedback": bool, "quantize_1d": bool, "seed": int}

    def __init__(self, process_group: Optional[dist.ProcessGroup] = None, bits: int = 4,
                 bucket_size: int = 512, rounding: str = "nearest",
                 error_feedback: bool = True, quantize_1d: bool = False, seed: int = 0,
                 named_parameters: Optional[Iterable[Tuple[str, torch.nn.Parameter]]] = None,
                 nonfinite: str = "error", communicator: Optional[gradcomm.Communicator] = None,
                 bucket_bytes: int = 4 << 20):
        super().__init__(process_group, named_parameters, nonfinite, communicator, bucket_bytes)
        self._keep_settings(locals())

    def _make_compressor(self) -> gradcomm.Compressor:
        return QuantizeCompressor(**self._settings())  # its keywords are the settings' names


def quant_hook(state: QuantState, bucket) -> torch.futures.Future[torch.Tensor]:
    """k-bit quantization for one DDP bucket: the future holds the averaged gradient."""
    return state._exchange(bucket)
