"""Deep Gradient Compression (Lin et al., ICLR 2018) as a DDP communication hook.

    state = DGCState(density=0.001, named_parameters=model.named_parameters())
    ddp_model.register_comm_hook(state, dgc_hook)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=0.1, momentum=0)  # momentum=0!
    state.check_optimizer(optimizer)
    for epoch in range(epochs):
        state.set_epoch(epoch)   # advances the sparsity warm-up (25%, 6.25%, ... per epoch)
        for x, y in loader: ...

The warm-up advances only with ``set_epoch()`` (or every ``steps_per_epoch`` steps when
that is given; ``warmup=None`` turns it off). A state still in its first warm-up epoch
after ``warmup_check_steps`` steps says so once, on rank 0, as a ``gradcomm.torch.
WarmupWarning``: it would otherwise send 25% of every tensor for the whole run.

THE HOOK'S OUTPUT ALREADY CONTAINS MOMENTUM. Each rank keeps DGC's momentum u and
velocity v per parameter (paper Eq. 7), sends only the largest ~density of |v|, masks
the momentum it sent (Eq. 9), and the hook returns the averaged velocity: the update.
Tensors with one dimension (biases, norms) are allreduced densely and their momentum is
applied after the average. So the optimizer must be plain SGD *without* momentum;
torch's momentum on top would apply momentum twice. Weight decay in the optimizer is
fine: it is applied locally, never compressed (as in the paper).
"""

import warnings
from typing import Iterable, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

import gradcomm
from gradcomm._gradcomm import DGC_PAPER_WARMUP, DgcCompressor
from gradcomm.torch._exchange import CompressedHookState, _number

class WarmupWarning(UserWarning):
    """DGC's warm-up has not advanced: set_epoch() was not called."""


#: The paper's sparsity warm-up: densities 25%, 6.25%, 1.5625%, 0.4% over the first four
#: epochs (4^-(e+1)), then the target density.
PAPER_WARMUP: Tuple[float, ...] = tuple(DGC_PAPER_WARMUP)


class DGCState(CompressedHookState):
    """State of :func:`dgc_hook`; holds every DGC setting and the per-parameter momenta.

    Args:
        process_group: the group DDP runs on (default: the world group).
        density: fraction of each >1-D tensor sent per step once warm-up is over
            (k = ceil(density * numel) slots per rank). Default 0.001.
        momentum: DGC's momentum factor m (u = m*u + g). Default 0.9.
        nesterov: Nesterov momentum correction (u = m*(u + g); v += u + g).
        selection: ``"sampled"`` (default: threshold estimated from a 1% sample, never a
            full sort) or ``"exact"`` (true top-k, ties to the lower index).
        warmup: densities of the first epochs, one per epoch; default the paper's
            (25%, 6.25%, 1.5625%, 0.4%). ``None`` or ``()``: the target density from the
            first step. Epochs advance with :meth:`set_epoch`, or every
            ``steps_per_epoch`` hook steps when that is given.
        steps_per_epoch: when > 0, the warm-up follows the step count instead of
            :meth:`set_epoch`.
        clip: local gradient clipping (paper Eq. 8): each tensor's local gradient is
            scaled to L2 norm at most ``clip / sqrt(world size)``. ``None``: off.
        fp16: send sparse values and dense tensors as float16 (indices stay uint32).
        momentum_masking: zero the momentum at the sent indices (paper Eq. 9). Default on.
        dense_fallback: allreduce a tensor densely when the sparse gather would move more
            bytes (density > 1/world size). Default on.
        sample_fraction: fraction of |v| sampled by the ``"sampled"`` selection.
        seed: seed of the sample offsets (mixed with each parameter's key and the rank).
        named_parameters: ``model.named_parameters()``: key the state by parameter name
            (recommended: checkpoints then survive any change of DDP's bucket layout).
        nonfinite: what a NaN/Inf gradient does: ``"error"`` (default, raised on every
            rank), ``"skip_step"`` (a zero update), ``"zero"`` (treated as 0).
        communicator: a gradcomm Communicator (``gradcomm.MpiCommunicator()`` in a job
            started by mpirun) to carry the collectives instead of the process group.
        warmup_check_steps: after this many steps still in the first warm-up epoch, warn
            once (rank 0) that the warm-up is not advancing. Default 1000; 0: never.
        bucket_bytes: summable payloads are fused into allreduces, and sparse ones into
            allgathers, of up to this many bytes.
        exchange: how the sparse tensors cross the ranks: ``"compressor"`` (default: DGC's
            allgather of every rank's slots, whose volume grows with the ranks),
            ``"allgather"`` (the same, planned), ``"reduce_scatter"`` (the sparse allreduce:
            regions owned by ranks, a global top-k, volume about constant in the ranks),
            ``"dense"`` (every tensor allreduced densely), or ``"auto"`` (the cost model
            picks per tensor from the links measured at the first backward). CPU tensors
            only. See docs/algorithms/sparse-allreduce.md.
        hierarchy: only ``"flat"``: the hierarchical exchange needs per-host communicators
            that the hooks do not build over torch.distributed (anything else raises).
    """

    _kind = "dgc"
    _kinds = {"density": float, "momentum": float, "nesterov": bool,
              "selection": ("sampled", "exact"), "warmup": None, "steps_per_epoch": int,
              "clip": None, "fp16": bool, "momentum_masking": bool, "dense_fallback": bool,
              "sample_fraction": float, "seed": int}

    def __init__(self, process_group: Optional[dist.ProcessGroup] = None,
                 density: float = 0.001, momentum: float = 0.9, nesterov: bool = False,
                 selection: str = "sampled",
                 warmup: Optional[Sequence[float]] = PAPER_WARMUP,
                 steps_per_epoch: int = 0, clip: Optional[float] = None, fp16: bool = False,
                 momentum_masking: bool = True, dense_fallback: bool = True,
                 sample_fraction: float = 0.01, seed: int = 0x5eed,
                 named_parameters: Optional[Iterable[Tuple[str, torch.nn.Parameter]]] = None,
                 nonfinite: str = "error", communicator: Optional[gradcomm.Communicator] = None,
                 bucket_bytes: int = 4 << 20, warmup_check_steps: int = 1000,
                 exchange: str = "compressor", hierarchy: str = "flat"):
        super().__init__(process_group, named_parameters, nonfinite, communicator, bucket_bytes,
                         exchange=exchange, hierarchy=hierarchy)
        self.warmup_check_steps = int(warmup_check_steps)
        self._warned_warmup = False
        warmup = tuple(_number(self._name, "warmup", d) for d in (warmup or ()))
        clip = None if clip is None else _number(self._name, "clip", clip)
        self._keep_settings(locals())

    def _make_compressor(self) -> gradcomm.Compressor:
        wire = "float16" if self.fp16 else "float32"
        return DgcCompressor(
            density=self.density, warmup_densities=list(self.warmup),
            steps_per_epoch=self.steps_per_epoch, momentum=self.momentum,
            nesterov=self.nesterov, momentum_masking=self.momentum_masking,
            clip_norm=self.clip or 0.0, selection=self.selection,
            sample_fraction=self.sample_fraction, seed=self.seed,
            value_dtype=wire, dense_dtype=wire, dense_fallback=self.dense_fallback)

    def _epoch_driven(self) -> bool:
        return self.steps_per_epoch == 0

    def _after_step(self) -> None:
        if (self._warned_warmup or not self.warmup or not self._epoch_driven()
                or self.warmup_check_steps <= 0 or self.epoch != 0
                or self.iteration < self.warmup_check_steps):
            return
        self._warned_warmup = True
        if self.rank == 0:
            warnings.warn(
                f"DGCState: {self.iteration} steps and still in the first warm-up epoch, "
                f"sending {self.warmup[0]:.4g} of every tensor instead of density "
                f"{self.density:g}: the warm-up advances only with state.set_epoch(epoch) at "
                "the start of each epoch (or every steps_per_epoch steps when given). Call "
                "set_epoch, pass steps_per_epoch=..., or warmup=None to start at the target "
                "density (warmup_check_steps=0 silences this when epochs are really that long)",
                WarmupWarning, stacklevel=2)

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Raises ValueError unless ``optimizer`` is SGD without momentum: the hook's output
        already includes DGC's momentum, so torch's momentum would apply it twice."""
        _require_plain_sgd(optimizer, "dgc_hook")


def _require_plain_sgd(optimizer: torch.optim.Optimizer, hook: str) -> None:
    if not isinstance(optimizer, torch.optim.SGD):
        raise ValueError(f"{hook} returns the update including momentum: use "
                         f"torch.optim.SGD(momentum=0), not {type(optimizer).__name__}")
    for i, group in enumerate(optimizer.param_groups):
        if group.get("momentum", 0) != 0 or group.get("nesterov", False):
            raise ValueError(
                f"{hook} returns the update including momentum, so the optimizer must not add "
                f"its own: param group {i} has momentum={group.get('momentum')}, "
                f"nesterov={group.get('nesterov')}; use torch.optim.SGD(..., momentum=0) and "
                "set the momentum on the state")


def dgc_hook(state: DGCState, bucket) -> torch.futures.Future[torch.Tensor]:
    """DGC for one DDP bucket: sparse tensors go through one fixed-size allgather of
    (index, value) slots per bucket, dense ones through one allreduce; the future holds
    the averaged update, momentum included (use SGD without momentum)."""
    return state._exchange(bucket)

