"""1-bit Adam (Tang et al., ICML 2021): an optimizer that is also its DDP hook's state.

    opt = OneBitAdam(ddp_model.parameters(), lr=1e-3, freeze_step=400)
    ddp_model.register_comm_hook(opt, onebit_adam_hook)

The optimizer is gradcomm's C++ ``OneBitAdam`` (its m, v, error feedback and update);
this class is the torch glue around it. For the first ``freeze_step`` steps it is Adam on
gradients the hook averages through gradcomm's dense Exchanger. From then on the variance
is frozen and DDP's gradients never cross the network: at the last bucket of each backward
the hook hands every parameter's local gradient to the C++ optimizer, which folds it into
the momentum (``m = b1*m + (1-b1)*g``) and averages the momenta through the
error-compensated 1-bit compressed allreduce (one alltoall and one allgather per step, about
1/32 of the bytes), and ``step()`` applies
``p -= lr * (m / (sqrt(v) + eps) + weight_decay * p)``. bfloat16 and float16 parameters
are updated through a float32 master copy kept by the C++ optimizer (each step rounds it
once into the parameter); m, v and the errors are float32. After the freeze ``p.grad`` holds the
averaged (compressed) momentum, not a gradient: call ``zero_grad()`` before the next
backward, as usual, and read gradients before ``step()``.
"""

from typing import List, Optional, Tuple

import torch
import torch.distributed as dist

import gradcomm
import gradcomm._gradcomm as _native
from gradcomm.torch._comm import communicator as torch_communicator
from gradcomm.torch._exchange import (_GRADIENT_DTYPES, STATE_VERSION, _check_bucket_object,
                                      _gradients, _invalid, _number)
from gradcomm.torch.dense import AllreduceState


class OneBitAdam(torch.optim.Optimizer):
    """1-bit Adam; register it as the state of :func:`onebit_adam_hook`.

    Args:
        params: parameters or parameter groups. Every group must share ``betas``, ``eps``,
            ``weight_decay`` and ``lr`` (gradcomm's optimizer keeps one set; schedulers may
            change ``lr`` on all groups alike).
        lr: learning rate. Default 1e-3.
        betas: (beta1, beta2). Default (0.9, 0.999).
        eps: added to sqrt(v). Default 1e-8 (the reference's; see ``precondition``).
        weight_decay: decoupled: ``p -= lr * (update + weight_decay * p)``. Default 0.
        freeze_step: steps of plain Adam on densely averaged gradients before the
            variance is frozen and momentum goes through the 1-bit allreduce (typically
            15-25% of training); at least 1.
        bias_correction: divide m by 1-beta1^t and v by 1-beta2^t (t stops at
            freeze_step for v). Off by default: the reference (DeepSpeed) update.
        precondition: compress ``m / (sqrt(v) + eps)`` and multiply back, instead of m.
            Exact without compression (v is frozen and equal on every rank); keeps the
            sign scale uniform where tiny frozen v_i make the reference diverge
            (docs/algorithms/onebit-adam.md). Off by default, for parity.
        process_group: the group DDP runs on (default: the world group).
        communicator: a gradcomm Communicator (``gradcomm.MpiCommunicator()`` under
            mpirun) for both stages' collectives instead of the process group.
        bucket_bytes: the warm-up's dense exchange fuses gradients into allreduces of up
            to this many bytes.
    """

    def __init__(self, params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, freeze_step: int = 100000,
                 bias_correction: bool = False, precondition: bool = False,
                 process_group: Optional[dist.ProcessGroup] = None,
                 communicator: Optional[_native.Communicator] = None,
                 bucket_bytes: int = 4 << 20):
        # The C++ optimizer is built at the first step; its option checks run now.
        n = "OneBitAdam"
        _native.check_onebit_adam_options(
            lr=_number(n, "lr", lr), beta1=_number(n, "betas", betas[0]),
            beta2=_number(n, "betas", betas[1]), eps=_number(n, "eps", eps),
            weight_decay=_number(n, "weight_decay", weight_decay),
            freeze_step=_number(n, "freeze_step", freeze_step, int))
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay))
        self._settings = self._shared_settings()
        self.freeze_step = int(freeze_step)
        self.bias_correction = bool(bias_correction)
        self.precondition = bool(precondition)
        self.process_group = process_group
        self.bucket_bytes = int(bucket_bytes)
        self.nonfinite_seen = 0  # non-finite gradient elements this rank sent as 0
        self._params = [p for g in self.param_groups for p in g["params"]]
        self._check_parameters()  # now, before any collective; again at the first step
        # The warm-up's dense average: the same Exchanger as every hook, its layers the
        # parameters in this optimizer's order (as the C++ optimizer registers them).
        self._dense = AllreduceState(
            process_group, named_parameters=[(f"param{i}", p) for i, p in enumerate(self._params)],
            communicator=communicator, bucket_bytes=self.bucket_bytes)
        self._dense._name = "OneBitAdam"
        self._comm = communicator  # None: a communicator over the process group, made lazily
        self._native = None
        self._pending: Optional[bytes] = None  # a shard loaded before the optimizer exists
        # This backward's buckets, each gradient by its parameter, until the last bucket.
        self._held: List[Tuple[torch.Tensor, dict, torch.futures.Future]] = []
        self._exchanged_at: Optional[int] = None
        self._compressed_bytes = 0
        self._steps = 0

    def _shared_settings(self) -> dict:
        first = self.param_groups[0]
        for i, group in enumerate(self.param_groups):
            for key in ("lr", "betas", "eps", "weight_decay"):
                if group[key] != first[key]:
                    raise _invalid(f"OneBitAdam: param group {i} has {key}={group[key]}, group 0 "
                                   f"{first[key]}; gradcomm's 1-bit Adam keeps one setting for "
                                   "all parameters")
        return {"betas": first["betas"], "eps": first["eps"],
                "weight_decay": first["weight_decay"]}

    def _check_parameters(self) -> None:
        for p in self._params:
            if (not p.is_contiguous() or p.dtype not in _GRADIENT_DTYPES
                    or p.device.type != "cpu"):
                raise _invalid(f"OneBitAdam: a parameter of shape {tuple(p.shape)} is "
                               f"{p.dtype} on {p.device} (contiguous: {p.is_contiguous()}); "
                               "gradcomm's 1-bit Adam updates contiguous float32, bfloat16 or "
                               "float16 CPU tensors")

    @property
    def _hook_state(self) -> AllreduceState:
        """The part that validates the process group (register_comm_hook uses it)."""
        return self._dense

    # ---- the C++ optimizer --------------------------------------------------------------
    def _native_optimizer(self):
        if self._native is None:
            self._dense._check_group()
            if self._comm is None:
                self._comm = torch_communicator(self.process_group)
            group = self.param_groups[0]
            self._check_parameters()  # the model may have been cast since construction
            self._native = _native.NativeOneBitAdam(
                self._comm, [(f"param{i}", p.detach()) for i, p in enumerate(self._params)],
                lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
                eps=group["eps"], weight_decay=group["weight_decay"],
                freeze_step=self.freeze_step, bias_correction=self.bias_correction,
                precondition=self.precondition, bucket_bytes=self.bucket_bytes)
            if self._pending is not None:
                pending, self._pending = self._pending, None
                self._native.load_state(_native.read_shard(
                    pending, self._dense.rank, self._dense.world_size, "onebit-adam")["state"])
        return self._native

    @property
    def steps(self) -> int:
        """Optimizer steps done."""
        return self._native.steps_done if self._native is not None else self._steps

    @property
    def frozen(self) -> bool:
        """Whether the variance is frozen: the compression stage."""
        return self.steps >= self.freeze_step

    @property
    def bytes_sent(self) -> int:
        """Bytes this rank sent so far (both stages), by the algorithm model of gradcomm's
        Communicator traffic counters."""
        return self._dense.bytes_sent + self._compressed_bytes

    # ---- state --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """torch's param groups plus this rank's C++ optimizer state (step, m, v and its own
        1-bit worker and server errors) as a checksummed shard: one per rank."""
        state = super().state_dict()
        if self._native is None and self._pending is not None:
            shard = self._pending
        else:
            native = self._native_optimizer()
            shard = _native.write_shard(self._dense.rank, self._dense.world_size,
                                        native.steps_done, "onebit-adam", native.save_state())
        state["gradcomm"] = {"version": STATE_VERSION, "nonfinite_seen": self.nonfinite_seen,
                             "shard": shard}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("gradcomm", None)
        if extra is None:
            raise _invalid("OneBitAdam.load_state_dict: no 'gradcomm' entry; this is not a "
                           "OneBitAdam state (a torch.optim.Adam state lacks the 1-bit errors)")
        if extra.get("version", 1) != STATE_VERSION:
            raise _invalid(f"OneBitAdam.load_state_dict: the state has version "
                           f"{extra.get('version', 1)} (gradcomm 0.1 kept m and v in torch); this "
                           f"gradcomm reads version {STATE_VERSION} (the C++ optimizer's state)")
        shard = _native.read_shard(extra["shard"], self._dense.rank, self._dense.world_size,
                                   "onebit-adam",
                                   f"OneBitAdam.load_state_dict on rank {self._dense.rank}")
        super().load_state_dict(state_dict)
        self._settings = self._shared_settings()
        self.nonfinite_seen = int(extra["nonfinite_seen"])
        if self._native is not None:
            self._native.load_state(shard["state"])
        else:
            self._pending, self._steps = extra["shard"], shard["step"]

    # ---- the hook's half --------------------------------------------------------------------
    def _exchange(self, bucket) -> torch.futures.Future:
        _check_bucket_object(bucket, "OneBitAdam")
        native = self._native_optimizer()
        if not native.frozen:
            return self._dense._exchange(bucket)
        buffer, params, bucket_grads = _gradients(bucket, "OneBitAdam")
        future = torch.futures.Future()
        self._held.append((buffer, dict(zip(params, bucket_grads)), future))
        if not bucket.is_last():
            return future
        held, self._held = self._held, []
        grads = {p: g for _, by_param, _ in held for p, g in by_param.items()}
        missing = [tuple(p.shape) for p in self._params if p not in grads]
        if missing or len(grads) != len(self._params):
            raise _invalid(f"onebit_adam_hook: DDP's buckets and this OneBitAdam's parameters "
                           f"differ (parameters of shapes {missing} got no gradient); give the "
                           "optimizer exactly the DDP model's parameters")
        local = [grads[p] for p in self._params]
        before = self._comm.bytes_sent
        self.nonfinite_seen += native.exchange_momentum(local, local)
        self._compressed_bytes += self._comm.bytes_sent - before
        self._exchanged_at = native.steps_done
        for buf, _, fut in held:
            fut.set_result(buf)
        return future

    # ---- the optimizer's half ----------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        native = self._native_optimizer()
        if self._shared_settings() != self._settings:
            raise _invalid("OneBitAdam: betas, eps or weight_decay changed after construction; "
                           "only lr may change during training")
        native.set_lr(self.param_groups[0]["lr"])
        if not native.frozen:
            native.warmup_update([p.grad if p.grad is not None else torch.zeros_like(p)
                                  for p in self._params])
        else:
            if self._exchanged_at != native.steps_done:
                raise RuntimeError(
                    f"OneBitAdam: step {native.steps_done} is past freeze_step="
                    f"{self.freeze_step} but the momenta were not exchanged: register the "
                    "optimizer as the hook's state with ddp_model.register_comm_hook(optimizer, "
                    "gradcomm.torch.onebit_adam_hook)")
            native.frozen_update()
        return loss


def onebit_adam_hook(state: OneBitAdam, bucket) -> torch.futures.Future[torch.Tensor]:
    """The DDP hook of :class:`OneBitAdam` (pass the optimizer as the state): a dense
    average during warm-up, then the 1-bit compressed allreduce of the momentum."""
    return state._exchange(bucket)
