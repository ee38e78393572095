"""L-GreCo (Markov et al., MLSys 2024): per-layer compression levels for a DDP hook,
chosen by dynamic programming.

    state = LGreCoState(family="quant", default=4, named_parameters=model.named_parameters())
    ddp_model.register_comm_hook(state, lgreco_hook)

Every ``replan_every`` steps, each rank measures, for each parameter and each candidate
setting, the bytes the parameter would send and the L2 error the setting would make on
its error-fed gradient (gradcomm's C++ LgrecoCompressor, inside the encode). After the
step, gradcomm's LgrecoPlanner averages that small table over DDP's process group with one
allreduce, and every rank solves the same multiple-choice knapsack: minimum bytes with
total error at most that of the uniform default. The plan applies from the next step;
residuals and momenta are kept across a change.

Families:
  ``"quant"``: k-bit max-min quantization (default bit widths 2, 3, 4, 5, 6, 8; default 4).
      The hook's output is the averaged gradient: use any optimizer (SGD with momentum,
      Adam).
  ``"dgc"``: DGC densities (default 0.0005 ... 0.05; default 0.001). Errors are measured on
      the velocity DGC is about to select from. As with :func:`dgc_hook` the output
      includes momentum: use SGD *without* momentum. Sparsity warm-up is off here.
Tensors with one dimension stay dense in both families and are not planned.
"""

from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

import gradcomm
import gradcomm._gradcomm as _native
from gradcomm.torch._exchange import CompressedHookState, _choice
from gradcomm.torch.dgc import _require_plain_sgd

DGC_DENSITIES: Tuple[float, ...] = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)
QUANT_BITS: Tuple[int, ...] = (2, 3, 4, 5, 6, 8)


class LGreCoState(CompressedHookState):
    """State of :func:`lgreco_hook`.

    Args:
        process_group: the group DDP runs on (default: the world group).
        family: ``"dgc"`` (densities) or ``"quant"`` (bit widths).
        default: the uniform default c0 whose total error is the budget (density 0.001,
            or 4 bits). It is used until the first plan.
        candidates: the settings to choose from (default ``DGC_DENSITIES`` or
            ``QUANT_BITS``); must contain ``default``.
        replan_every: F, steps between plans: the hook profiles in steps F-1, 2F-1, ...
            (counted from ``first_step``) and the plan applies from the step after.
        first_step: no profiling before this step.
        bins: B, error bins of the knapsack (the reference's 10000).
        adaptive: False keeps the uniform default for good (the baseline L-GreCo is
            measured against; same compressor, same wire format).
        momentum, nesterov, selection: DGC family, as in :class:`DGCState`.
        bucket_size, rounding: quant family: elements per (min, unit) bucket, and
            ``"nearest"`` or ``"stochastic"`` rounding.
        fp16: DGC family: float16 values on the wire.
        seed: sample offsets (DGC) or stochastic rounding (quant).
        named_parameters, nonfinite, communicator, bucket_bytes: as in :class:`DGCState`.
    """

    _kind = "lgreco"
    _kinds = {"family": ("dgc", "quant"), "default": None, "candidates": None,
              "replan_every": int, "first_step": int, "bins": int, "adaptive": bool,
              "momentum": float, "nesterov": bool, "selection": ("sampled", "exact"),
              "bucket_size": int, "rounding": ("nearest", "stochastic"), "fp16": bool,
              "seed": int}

    def __init__(self, process_group: Optional[dist.ProcessGroup] = None, family: str = "dgc",
                 default: Optional[float] = None, candidates: Optional[Sequence[float]] = None,
                 replan_every: int = 100, first_step: int = 0, bins: int = 10000,
                 adaptive: bool = True, momentum: float = 0.9, nesterov: bool = False,
                 selection: str = "sampled", bucket_size: int = 512, rounding: str = "nearest",
                 fp16: bool = False, seed: int = 0x5eed,
                 named_parameters: Optional[Iterable[Tuple[str, torch.nn.Parameter]]] = None,
                 nonfinite: str = "error", communicator: Optional[gradcomm.Communicator] = None,
                 bucket_bytes: int = 4 << 20):
        super().__init__(process_group, named_parameters, nonfinite, communicator, bucket_bytes)
        if _choice(self._name, "family", family, ("dgc", "quant")) == "dgc":
            candidates = tuple(float(c) for c in (candidates or DGC_DENSITIES))
            default = float(0.001 if default is None else default)
        else:
            candidates = tuple(int(c) for c in (candidates or QUANT_BITS))
            default = int(4 if default is None else default)
        self._planner = None
        self._replans_before = 0  # re-plans of the run this state was resumed from
        self._keep_settings(locals())
        self.default_index = self.candidates.index(self.default)

    # ---- settings and compressors -----------------------------------------------------
    def _make_compressor(self) -> gradcomm.Compressor:
        quant = self.family == "quant"
        return _native.LgrecoCompressor(
            family=self.family,
            bit_widths=list(self.candidates) if quant else [4],
            default_bits=self.default if quant else 4,
            densities=[0.001] if quant else list(self.candidates),
            default_density=0.001 if quant else self.default,
            period=self.replan_every, first_step=self.first_step, bins=self.bins,
            adaptive=self.adaptive, bucket_size=self.bucket_size, rounding=self.rounding,
            seed=self.seed, momentum=self.momentum, nesterov=self.nesterov,
            selection=self.selection, value_dtype="float16" if self.fp16 else "float32")

    def _on_built(self) -> None:
        self._planner = _native.LgrecoPlanner(self._exchanger.communicator, self.compressor)

    def _after_step(self) -> None:
        self._planner.after_step()

    def _extra_state(self) -> dict:
        return {"replans": self.replans}

    def _load_extra_state(self, extra: dict) -> None:
        # The plan in force travels in the compressor's state; the planner restarts.
        self._replans_before = int(extra.get("replans", 0)) - (
            0 if self._planner is None else self._planner.replans)

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """DGC family: raises ValueError unless ``optimizer`` is SGD without momentum (the
        hook's output includes momentum). The quant family takes any optimizer."""
        if self.family == "dgc":
            _require_plain_sgd(optimizer, "lgreco_hook (family 'dgc')")

    # ---- the plan -------------------------------------------------------------------------
    @property
    def replans(self) -> int:
        """Re-plans made so far (in this process)."""
        return self._replans_before + (0 if self._planner is None else self._planner.replans)

    @property
    def last_plan(self) -> Optional[dict]:
        """The solver's answer at the last re-plan: choice (candidate index per layer),
        bytes, error, budget, fallback, pinned."""
        if self._planner is None or not self._planner.replans:
            return None
        return self._planner.plan

    @property
    def plan(self) -> Dict[str, int]:
        """The candidate index in force per planned parameter, by key."""
        compressor = self.compressor
        if compressor is None:
            return {}
        return {name: int(c) for name, c, layer in
                zip(self.layer_names, compressor.choice, range(len(self.layer_names)))
                if compressor.is_planned(layer)}

    def planned_settings(self) -> Dict[str, float]:
        """The setting in force per planned parameter (density or bits), by key."""
        return {key: self.candidates[c] for key, c in self.plan.items()}


def lgreco_hook(state: LGreCoState, bucket) -> torch.futures.Future[torch.Tensor]:
    """L-GreCo for one DDP bucket: each parameter compressed at its planned setting."""
    return state._exchange(bucket)
