"""L-GreCo (Markov et al., MLSys 2024): per-layer compression levels for a DDP hook,
chosen by dynamic programming.

    state = LGreCoState(family="quant", default=4, named_parameters=model.named_parameters())
    ddp_model.register_comm_hook(state, lgreco_hook)

Every ``replan_every`` steps, each rank measures, for each parameter and each candidate
setting, the bytes the parameter would send and the L2 error the setting would make on
its error-fed gradient. The hook averages that small table over DDP's process group with
one allreduce, and every rank solves the same multiple-choice knapsack (gradcomm's C++
solver): minimum bytes with total error at most that of the uniform default. The plan
applies from the next step; residuals and momenta are kept across a change.

Families:
  ``"quant"``: k-bit max-min quantization (default bit widths 2, 3, 4, 5, 6, 8; default 4),
      profiled by gradcomm's LgrecoCompressor. The hook's output is the averaged gradient:
      use any optimizer (SGD with momentum, Adam).
  ``"dgc"``: DGC densities (default 0.0005 ... 0.05; default 0.001). Errors are measured on
      the velocity DGC is about to select from. As with :func:`dgc_hook` the output
      includes momentum: use SGD *without* momentum. Sparsity warm-up is off here.
Tensors with one dimension stay dense in both families and are not planned.
"""

import math
import zlib
from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

import gradcomm
import gradcomm._gradcomm as _native
from gradcomm.torch._exchange import CompressedHookState
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
        named_parameters, nonfinite: as in :class:`DGCState`.
    """

    _kind = "lgreco"

    def __init__(self, process_group: Optional[dist.ProcessGroup] = None, family: str = "dgc",
                 default: Optional[float] = None, candidates: Optional[Sequence[float]] = None,
                 replan_every: int = 100, first_step: int = 0, bins: int = 10000,
                 adaptive: bool = True, momentum: float = 0.9, nesterov: bool = False,
                 selection: str = "sampled", bucket_size: int = 512, rounding: str = "nearest",
                 fp16: bool = False, seed: int = 0x5eed,
                 named_parameters: Optional[Iterable[Tuple[str, torch.nn.Parameter]]] = None,
                 nonfinite: str = "error", communicator: Optional[gradcomm.Communicator] = None):
        super().__init__(process_group, named_parameters, nonfinite, communicator)
        if family not in ("dgc", "quant"):
            raise ValueError(f"LGreCoState: family must be 'dgc' or 'quant', got {family!r}")
        self.family = family
        if family == "dgc":
            self.candidates = tuple(float(c) for c in (candidates or DGC_DENSITIES))
            self.default = float(0.001 if default is None else default)
        else:
            self.candidates = tuple(int(c) for c in (candidates or QUANT_BITS))
            self.default = int(4 if default is None else default)
        if self.default not in self.candidates:
            raise ValueError(f"LGreCoState: the default {self.default} is not among the "
                             f"candidates {self.candidates}")
        if int(replan_every) < 1 or int(first_step) < 0 or int(bins) < 1:
            raise ValueError(f"LGreCoState: need replan_every >= 1, first_step >= 0, bins >= 1; "
                             f"got {replan_every}, {first_step}, {bins}")
        self.default_index = self.candidates.index(self.default)
        self.replan_every = int(replan_every)
        self.first_step = int(first_step)
        self.bins = int(bins)
        self.adaptive = bool(adaptive)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.selection = selection
        self.bucket_size = int(bucket_size)
        self.rounding = rounding
        self.fp16 = bool(fp16)
        self.seed = int(seed)
        self.plan: Dict[str, int] = {}  # key -> candidate index in force (planned params)
        self._next_plan: Optional[Dict[str, int]] = None  # solved, applies next step
        self._errors: Dict[str, list] = {}  # DGC family: key -> errors measured this step
        self._wire_bytes: Dict[str, list] = {}  # key -> wire bytes per candidate
        self._sparse: Dict[str, list] = {}  # DGC family: key -> whether each candidate is sparse
        self._knapsack = _native.LgrecoKnapsack()
        self.replans = 0
        self.last_plan: Optional[dict] = None  # the solver's answer at the last re-plan
        self._make_compressor(16, 2, "validation")

    # ---- settings and compressors -----------------------------------------------------
    def _settings(self) -> dict:
        return {"family": self.family, "default": self.default,
                "candidates": list(self.candidates), "replan_every": self.replan_every,
                "first_step": self.first_step, "bins": self.bins, "adaptive": self.adaptive,
                "momentum": self.momentum, "nesterov": self.nesterov,
                "selection": self.selection, "bucket_size": self.bucket_size,
                "rounding": self.rounding, "fp16": self.fp16, "seed": self.seed}

    def _key_seed(self, key: str) -> int:
        return (self.seed ^ zlib.crc32(key.encode())) & 0xFFFFFFFFFFFFFFFF

    def _dgc(self, density: float, key: str) -> gradcomm.Compressor:
        wire = "float16" if self.fp16 else "float32"
        # No dense fallback: a planned layer stays sparse at every density. DgcCompressor's
        # dense path applies momentum after the average and ignores v, so a plan moving a
        # layer from sparse to dense would drop its residual and leave u different on each
        # rank. A density above 1/p just costs more bytes, which the knapsack sees.
        # max_layer_density lets a re-plan change the density in place (_apply).
        return _native.DgcCompressor(
            density=density, warmup_densities=[], momentum=self.momentum,
            nesterov=self.nesterov, selection=self.selection, seed=self._key_seed(key),
            value_dtype=wire, dense_dtype=wire, dense_fallback=False,
            max_layer_density=max(self.candidates))

    def _make_compressor(self, numel: int, ndim: int, key: str) -> gradcomm.Compressor:
        if self.family == "dgc":
            choice = self.plan.get(key, self.default_index)
            return self._dgc(self.candidates[choice], key)
        # Profiling only when adaptive: the uniform baseline runs the same quantizer.
        period = self.replan_every if self.adaptive else 2**62
        return _native.LgrecoQuantCompressor(
            bit_widths=list(self.candidates), default_bits=self.default, period=period,
            first_step=self.first_step, bins=self.bins, bucket_size=self.bucket_size,
            rounding=self.rounding, seed=self._key_seed(key))

    def _planned(self, entry) -> bool:
        if self.family == "dgc":
            return entry.ndim > 1
        return entry.compressor.is_planned(0)

    def _candidate_bytes(self, entry) -> list:
        """Wire bytes per candidate for one parameter (same on every rank), cached."""
        cached = self._wire_bytes.get(entry.key)
        if cached is None:
            if self.family == "quant":
                cached = [_native.allgather_wire_bytes(b, self.world_size)
                          for b in entry.compressor.local_table()[0]]
            else:
                # Without dense fallback the collective does not depend on the density.
                sparse = entry.compressor.is_sparse(0)
                model = _native.allgather_wire_bytes if sparse else _native.allreduce_wire_bytes
                cached = [model(entry.compressor.payload_bytes_at(0, d), self.world_size)
                          for d in self.candidates]
                self._sparse[entry.key] = [sparse] * len(self.candidates)
            self._wire_bytes[entry.key] = cached
        return cached

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """DGC family: raises ValueError unless ``optimizer`` is SGD without momentum (the
        hook's output includes momentum). The quant family takes any optimizer."""
        if self.family == "dgc":
            _require_plain_sgd(optimizer, "lgreco_hook (family 'dgc')")

    # ---- the schedule -----------------------------------------------------------------------
    def _profiles(self, step: int) -> bool:
        return (self.adaptive and step >= self.first_step
                and (step - self.first_step + 1) % self.replan_every == 0)

    def _begin_step(self) -> None:
        if self._next_plan is not None:
            self._apply(self._next_plan)
            self._next_plan = None

    def _apply(self, plan: Dict[str, int]) -> None:
        for entry in self._entries.values():
            choice = plan.get(entry.key)
            if choice is None or choice == self.plan.get(entry.key, self.default_index):
                continue
            if self.family == "quant":
                entry.compressor.apply_plan([choice])
            else:
                # In place: u and v are kept, nothing is allocated.
                entry.compressor.set_layer_density(0, self.candidates[choice])
        self.plan.update(plan)

    def _before_encode(self, entries, grads) -> None:
        if self.family != "dgc" or not self._profiles(self.iteration):
            return
        # The velocity DGC selects from this step: v + u' (Nesterov: v + u' + g), with
        # u' = m*u + g (Nesterov: m*(u + g)). One sort serves every density.
        m = self.momentum
        for entry, grad in zip(entries, grads):
            if not self._planned(entry):
                continue
            u = torch.from_numpy(entry.compressor.momentum(0).copy())
            v = torch.from_numpy(entry.compressor.residual(0).copy())
            g = torch.nan_to_num(grad.detach(), nan=0.0, posinf=0.0, neginf=0.0)
            if self.nesterov:
                x = v + m * (u + g) + g
            else:
                x = v + (m * u + g)
            squares = torch.sort(x.double().square(), descending=True).values
            kept = torch.cumsum(squares, 0)
            total = float(kept[-1])
            self._candidate_bytes(entry)  # fills self._sparse
            errors = []
            for d, sparse in zip(self.candidates, self._sparse[entry.key]):
                k = min(entry.numel, math.ceil(d * entry.numel))
                # A candidate the compressor would send densely makes no error.
                errors.append(math.sqrt(max(total - float(kept[k - 1]), 0.0)) if sparse else 0.0)
            self._errors[entry.key] = errors

    def _after_last_bucket(self) -> None:
        if not self._profiles(self.iteration):
            return
        rows = sorted((e for e in self._entries.values() if self._planned(e)),
                      key=lambda e: e.key)
        if not rows:
            return
        sizes, errors = [], []
        for entry in rows:
            sizes.extend(self._candidate_bytes(entry))
            if self.family == "quant":
                if not entry.compressor.table_ready():
                    raise RuntimeError(f"LGreCoState: parameter {entry.key} was not profiled "
                                       f"in step {self.iteration}")
                errors.extend(entry.compressor.local_table()[1])
                entry.compressor.consume_table()
            else:
                errors.extend(self._errors.pop(entry.key))
        # One allreduce of the small error table; every rank then solves the same DP.
        # (float32 through a gradcomm communicator, which has no float64: the errors are
        # binned into 10^4 steps of the budget, far coarser than float32's precision.)
        table = torch.tensor(errors, dtype=torch.float64 if self.communicator is None
                             else torch.float32)
        self._allreduce(table).wait()
        table = table.double() / self.world_size
        answer = self._knapsack.solve(len(rows), len(self.candidates), sizes, table.tolist(),
                                      [self.default_index] * len(rows), self.bins)
        self._next_plan = {e.key: int(c) for e, c in zip(rows, answer["choice"])}
        self.replans += 1
        self.last_plan = answer

    def planned_settings(self) -> Dict[str, float]:
        """The setting in force per planned parameter (density or bits), by key."""
        return {e.key: self.candidates[self.plan.get(e.key, self.default_index)]
                for e in self._entries.values() if self._planned(e)}

    # ---- checkpoints --------------------------------------------------------------------
    def _extra_state(self) -> dict:
        return {"plan": dict(self.plan), "next_plan": self._next_plan,
                "replans": self.replans}

    def _load_extra_state(self, extra: dict) -> None:
        self.replans = int(extra.get("replans", 0))
        self._next_plan = extra.get("next_plan")
        plan = dict(extra.get("plan", {}))
        # Parameters met already switch now; the others are built at their planned
        # setting when first seen (_make_compressor reads self.plan).
        self._apply(plan)


def lgreco_hook(state: LGreCoState, bucket) -> torch.futures.Future[torch.Tensor]:
    """L-GreCo for one DDP bucket: each parameter compressed at its planned setting."""
    return state._exchange(bucket)
