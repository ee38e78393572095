"""1-bit Adam (Tang et al., ICML 2021): an optimizer that is also its DDP hook's state.

    opt = OneBitAdam(ddp_model.parameters(), lr=1e-3, freeze_step=400)
    ddp_model.register_comm_hook(opt, onebit_adam_hook)

For the first ``freeze_step`` steps it is Adam on gradients the hook averages with a
dense allreduce. From then on the variance is frozen and DDP's gradients never cross the
network: the hook folds each rank's local gradient into its momentum
(``m = b1*m + (1-b1)*g``) and averages the momenta through gradcomm's error-compensated
1-bit compressed allreduce (one alltoall and one allgather per bucket, about 1/32 of the
bytes), and ``step()`` applies ``p -= lr * (m / (sqrt(v) + eps) + weight_decay * p)``.
After the freeze ``p.grad`` holds the averaged (compressed) momentum, not a gradient, and
``step()`` builds each update in ``p.grad`` (no allocation per step): call
``zero_grad()`` before the next backward, as usual, and read gradients before ``step()``.
"""

import math
from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist

import gradcomm._gradcomm as _native
from gradcomm.torch._comm import communicator
from gradcomm.torch.dense import AllreduceState


class OneBitAdam(torch.optim.Optimizer):
    """1-bit Adam; register it as the state of :func:`onebit_adam_hook`.

    Args:
        params: parameters or parameter groups (``lr``, ``betas``, ``eps``,
            ``weight_decay`` may be set per group).
        lr: learning rate. Default 1e-3.
        betas: (beta1, beta2). Default (0.9, 0.999).
        eps: added to sqrt(v). Default 1e-8 (the reference's; see ``precondition``).
        weight_decay: decoupled: ``p -= lr * (update + weight_decay * p)``. Default 0.
        freeze_step: steps of plain Adam on densely averaged gradients before the
            variance is frozen and momentum goes through the 1-bit allreduce (typically
            15-25% of training).
        bias_correction: divide m by 1-beta1^t and v by 1-beta2^t (t stops at
            freeze_step for v). Off by default: the reference (DeepSpeed) update.
        precondition: compress ``m / (sqrt(v) + eps)`` and multiply back, instead of m.
            Exact without compression (v is frozen and equal on every rank); keeps the
            sign scale uniform where tiny frozen v_i make the reference diverge
            (docs/algorithms/onebit-adam.md). Off by default, for parity.
        process_group: the group DDP runs on (default: the world group).
        communicator: a gradcomm Communicator (``gradcomm.MpiCommunicator()`` under
            mpirun) for both stages' collectives instead of the process group.
    """

    def __init__(self, params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, freeze_step: int = 100000,
                 bias_correction: bool = False, precondition: bool = False,
                 process_group: Optional[dist.ProcessGroup] = None,
                 communicator: Optional[_native.Communicator] = None):
        if not lr >= 0.0:
            raise ValueError(f"OneBitAdam: lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"OneBitAdam: betas must be in [0, 1), got {betas}")
        if not eps > 0.0:
            raise ValueError(f"OneBitAdam: eps must be > 0, got {eps}")
        if not weight_decay >= 0.0:
            raise ValueError(f"OneBitAdam: weight_decay must be >= 0, got {weight_decay}")
        if int(freeze_step) != freeze_step or freeze_step < 0:
            raise ValueError(f"OneBitAdam: freeze_step must be an integer >= 0, got {freeze_step}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay))
        self.freeze_step = int(freeze_step)
        self.bias_correction = bool(bias_correction)
        self.precondition = bool(precondition)
        self.process_group = process_group
        self.steps = 0  # optimizer steps done
        self.nonfinite_seen = 0  # non-finite gradient elements this rank sent as 0
        self._dense = AllreduceState(process_group, communicator=communicator)  # warm-up
        self._dense._name = "OneBitAdam"
        self._comm = communicator  # None: a communicator over the process group, made lazily
        self._compressed_bytes = 0
        self._errors: Dict[torch.Tensor, _native.OneBitErrorState] = {}
        self._pending_errors: Dict[int, bytes] = {}
        self._exchanged: Dict[torch.Tensor, int] = {}  # param -> step its momentum was averaged
        self._workspaces: Dict[Tuple[int, ...], torch.Tensor] = {}
        self._group_of: Dict[torch.Tensor, dict] = {
            p: g for g in self.param_groups for p in g["params"]}

    @property
    def _hook_state(self) -> AllreduceState:
        """The part that validates the process group (register_comm_hook uses it)."""
        return self._dense

    # ---- state --------------------------------------------------------------------------
    @property
    def frozen(self) -> bool:
        """Whether the variance is frozen: the compression stage."""
        return self.steps >= self.freeze_step

    @property
    def bytes_sent(self) -> int:
        """Bytes this rank sent so far (both stages), by the algorithm model of gradcomm's
        Communicator traffic counters."""
        return self._dense.bytes_sent + self._compressed_bytes

    def _moments(self, p: torch.Tensor):
        state = self.state[p]
        if not state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        return state["exp_avg"], state["exp_avg_sq"]

    def _param_index(self) -> Dict[torch.Tensor, int]:
        return {p: i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}

    def _error_state(self, p: torch.Tensor, index: Dict[torch.Tensor, int]):
        errors = self._errors.get(p)
        if errors is None:
            errors = _native.OneBitErrorState(p.numel(), self._dense.world_size)
            blob = self._pending_errors.pop(index[p], None)
            if blob is not None:
                errors.load(blob)
            self._errors[p] = errors
        return errors

    def state_dict(self) -> dict:
        """torch's optimizer state (m, v) plus this rank's step count and its 1-bit worker
        and server errors: one shard per rank (the errors differ between ranks)."""
        state = super().state_dict()
        index = self._param_index()
        errors = {index[p]: e.save() for p, e in self._errors.items()}
        errors.update(self._pending_errors)
        state["gradcomm"] = {"steps": self.steps, "world_size": self._dense.world_size,
                             "rank": self._dense.rank, "nonfinite_seen": self.nonfinite_seen,
                             "errors": errors}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("gradcomm", None)
        if extra is None:
            raise ValueError("OneBitAdam.load_state_dict: no 'gradcomm' entry; this is not a "
                             "OneBitAdam state (a torch.optim.Adam state lacks the 1-bit errors)")
        for field, mine in (("world_size", self._dense.world_size), ("rank", self._dense.rank)):
            if extra[field] != mine:
                raise ValueError(f"OneBitAdam.load_state_dict: the shard was saved with "
                                 f"{field}={extra[field]}, this process has {mine}")
        super().load_state_dict(state_dict)
        self._group_of = {p: g for g in self.param_groups for p in g["params"]}
        self.steps = int(extra["steps"])
        self.nonfinite_seen = int(extra["nonfinite_seen"])
        index = self._param_index()
        blobs = dict(extra["errors"])
        for p, errors in self._errors.items():
            if index[p] in blobs:
                errors.load(blobs.pop(index[p]))
        self._pending_errors = blobs

    # ---- the hook's half --------------------------------------------------------------------
    def _exchange(self, bucket) -> torch.futures.Future:
        if not self.frozen:
            return self._dense._exchange(bucket)
        self._dense._check_group()
        if self._comm is None:
            self._comm = communicator(self.process_group)
        buffer = bucket.buffer()
        if buffer.dtype != torch.float32:
            raise TypeError(f"onebit_adam_hook takes float32 gradients, the bucket holds "
                            f"{buffer.dtype} ({buffer.numel()} elements)")
        params = bucket.parameters()
        index = self._param_index()
        xs, errors, moments = [], [], []
        offset = 0
        for p in params:
            if p not in self._group_of:
                raise ValueError(f"onebit_adam_hook: DDP holds a parameter of shape "
                                 f"{tuple(p.shape)} that this OneBitAdam does not optimize")
            beta1 = self._group_of[p]["betas"][0]
            m, v = self._moments(p)
            x = buffer[offset:offset + p.numel()]
            offset += p.numel()
            # Local momentum, then the buffer becomes what is averaged: m, or m / denom.
            m.mul_(beta1).add_(x.view_as(m), alpha=1.0 - beta1)
            if self.precondition:
                self._denominator(p, v.view(-1), out=x)
                torch.div(m.view(-1), x, out=x)
            else:
                x.copy_(m.view(-1))
            xs.append(x)
            errors.append(self._error_state(p, index))
            moments.append((p, m, v))
        key = tuple(id(p) for p in params)
        workspace = self._workspaces.get(key)
        if workspace is None:
            nbytes = _native.onebit_workspace_bytes([x.numel() for x in xs],
                                                    self._dense.world_size)
            workspace = self._workspaces[key] = torch.empty(nbytes, dtype=torch.uint8)
        before = self._comm.bytes_sent
        self.nonfinite_seen += _native.compressed_allreduce(self._comm, xs, errors, xs,
                                                            workspace)
        self._compressed_bytes += self._comm.bytes_sent - before
        for (p, m, v), x in zip(moments, xs):
            if self.precondition:
                self._denominator(p, v, out=m).view(-1).mul_(x)
            else:
                m.view(-1).copy_(x)
            self._exchanged[p] = self.steps
        future = torch.futures.Future()
        future.set_result(buffer)
        return future

    def _denominator(self, p: torch.Tensor, v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Writes sqrt(v_hat) + eps into `out` (no allocation: the callers pass a buffer
        whose contents they no longer need)."""
        group = self._group_of[p]
        torch.sqrt(v, out=out)
        if self.bias_correction:
            # v has seen min(t, freeze_step) updates: its correction stops at the freeze.
            t = min(self.steps + 1, self.freeze_step) if self.freeze_step else 1
            out.div_(math.sqrt(1.0 - group["betas"][1] ** t))
        return out.add_(group["eps"])

    # ---- the optimizer's half ----------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        frozen = self.frozen
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                m, v = self._moments(p)
                if not frozen:
                    m.mul_(beta1).add_(p.grad, alpha=1.0 - beta1)
                    v.mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
                elif self._exchanged.get(p) != self.steps:
                    raise RuntimeError(
                        f"OneBitAdam: step {self.steps} is past freeze_step={self.freeze_step} "
                        f"but the momentum of a parameter of shape {tuple(p.shape)} was not "
                        "exchanged: register the optimizer as the hook's state with "
                        "ddp_model.register_comm_hook(optimizer, gradcomm.torch.onebit_adam_hook)")
                # The update is built in p.grad, whose content is spent by now (the
                # gradient went into m and v; after the freeze it was the exchanged m).
                update = self._denominator(p, v, out=p.grad)
                torch.div(m, update, out=update)
                if self.bias_correction:
                    update.div_(1.0 - beta1 ** (self.steps + 1))
                if group["weight_decay"] > 0.0:
                    update.add_(p, alpha=group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
        self.steps += 1
        return loss


def onebit_adam_hook(state: OneBitAdam, bucket) -> torch.futures.Future[torch.Tensor]:
    """The DDP hook of :class:`OneBitAdam` (pass the optimizer as the state): a dense
    average during warm-up, then the 1-bit compressed allreduce of the momentum."""
    return state._exchange(bucket)

