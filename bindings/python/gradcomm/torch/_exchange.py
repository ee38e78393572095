"""What every gradcomm DDP hook shares: torch glue around gradcomm's C++ Exchanger.

A hook state holds ONE gradcomm ``Compressor`` for the whole model, with every parameter
DDP hands it registered as a layer, keyed by the parameter itself (never by
``bucket.index()``, which changes when DDP rebuilds its buckets after the first
iteration). The step is run by the C++ ``Exchanger`` - the same step engine, framing and
non-finite policy a C++ trainer uses - over a ``PythonCommunicator`` whose collectives are
``torch.distributed`` calls on DDP's process group (or over a gradcomm ``Communicator`` the
user gives). Python only hands each bucket's gradient slices to ``submit()``, whose
collectives start as soon as their layers are encoded, and calls ``finish_step()`` at the
last bucket of the step, which decodes every update into the bucket buffers.

The first backward learns the parameters: its buckets are held (their futures pending)
until the last one, then the Exchanger is built - which checks that every rank registered
the same layers with the same settings - and the whole step runs. From then on each bucket
is encoded as it arrives. Bucket futures complete when the step finishes (DDP waits for
them only after the last bucket), so an error under ``nonfinite="error"`` is raised by the
last hook call itself and reaches ``loss.backward()``: as the gradcomm exception on torch
2.x, as a ``RuntimeError`` whose message starts with the gradcomm type on torch 1.13 (its
reducer re-raises hook errors that way). Every step's layout is agreed by all ranks before
its first collective, so a schedule moved on one rank fails everywhere instead of hanging.
"""

import math
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.distributed as dist

import gradcomm
import gradcomm._gradcomm as _native
from gradcomm.torch._comm import communicator as torch_communicator

_NONFINITE_POLICIES = ("error", "skip_step", "zero")
#: How a DGC state's sparse layers cross the ranks (ExchangerOptions::exchange):
#: "compressor" keeps DGC's allgather; "auto" lets the cost model pick per layer.
EXCHANGES = ("compressor", "auto", "dense", "allgather", "reduce_scatter")
#: Gradient dtypes the hooks take: compressors, momenta and residuals stay float32; the
#: update is written back in the bucket's dtype.
_GRADIENT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: Version of ``state_dict()``: 2 keeps one compressor for the model (gradcomm 0.2);
#: version 1 (gradcomm 0.1) kept one per parameter.
STATE_VERSION = 2


def _invalid(message: str) -> "gradcomm.InvalidArgumentError":
    return gradcomm.InvalidArgumentError(message)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _number(owner: str, name: str, value, kind=float):
    """`value` as a finite float (or int), or an InvalidArgumentError naming the argument.
    Ranges are the C++ options' to check, when the states make them in their constructors;
    finiteness is checked here too, for the settings a compressor does not use (a NaN would
    make every later comparison of settings fail)."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or isinstance(value, float) and not math.isfinite(value)):
        raise _invalid(f"{owner}: {name} must be a finite number, got {value!r}")
    if kind is int:
        if int(value) != value:
            raise _invalid(f"{owner}: {name} must be an integer, got {value!r}")
        return int(value)
    return float(value)


def _choice(owner: str, name: str, value, choices: tuple):
    if value not in choices:
        raise _invalid(f"{owner}: {name} must be one of {choices}, got {value!r}")
    return value


def _exchange_choice(owner: str, exchange: str, hierarchy: str) -> str:
    """`exchange`, checked; `hierarchy` must be "flat": the hooks have no host communicators."""
    if hierarchy != "flat":
        raise _invalid(
            f"{owner}: hierarchy={hierarchy!r} is not available in the DDP hooks: the "
            "hierarchical exchange needs a communicator inside each host and one across "
            "hosts, which gradcomm does not build over torch.distributed yet. Use "
            "hierarchy='flat' (the default), or gradcomm-train / the C++ Exchanger with "
            "MpiHostCommunicators for a hierarchical exchange")
    return _choice(owner, "exchange", exchange, EXCHANGES)


def _check_bucket_object(bucket, owner: str) -> None:
    """torch.compile(DDP(model)) with optimize_ddp="python_reducer" (compiled autograd)
    bypasses DDP's bucketed reducer and calls the hook once per parameter with a
    (grad, param) pair, ignoring what it returns: gradcomm's engine needs the buckets."""
    if isinstance(bucket, tuple):
        raise _invalid(
            f"{owner}: the hook was called with a (grad, param) pair, which is how "
            "torch.compile(DDP(model)) calls comm hooks under "
            "torch._dynamo.config.optimize_ddp='python_reducer' (compiled autograd): gradcomm "
            "hooks need DDP's bucketed reducer. Use DDP(torch.compile(model)), or keep "
            "torch.compile(DDP(model)) with the default optimize_ddp setting")


def _gradients(bucket, owner: str) -> Tuple[torch.Tensor, list, tuple]:
    """The bucket's buffer, its parameters and their gradients (views of the buffer), or
    an error for a bucket the hooks cannot take."""
    _check_bucket_object(bucket, owner)
    buffer, params = bucket.buffer(), list(bucket.parameters())
    if buffer.dtype not in _GRADIENT_DTYPES:
        names = ", ".join(_dtype_name(d) for d in _GRADIENT_DTYPES)
        raise _invalid(f"{owner}: gradcomm hooks take {names} gradients, the bucket "
                       f"holds {buffer.dtype} ({buffer.numel()} elements)")
    sizes = [p.numel() for p in params]
    if sum(sizes) != buffer.numel():
        raise RuntimeError(f"{owner}: bucket of {buffer.numel()} elements "
                           f"but its parameters have {sum(sizes)}")
    return buffer, params, buffer.split(sizes)


class CompressedHookState:
    """Base of the gradcomm hook states: the process group, the model's compressor and
    Exchanger, the step counter, and ``state_dict()`` / ``load_state_dict()`` of this rank's
    shard.

    Subclasses define ``_make_compressor()`` (one compressor for every layer) and
    ``_kinds`` (their settings), and call ``_keep_settings(locals())`` in their constructor;
    they may override ``_after_step()``.
    """

    _kind = "base"
    #: The subclass's settings - its constructor's own arguments, in the order state_dict()
    #: lists them - and their kinds: float, int, bool, a tuple of the allowed words, or None
    #: for one the constructor has already converted.
    _kinds: Dict[str, object] = {}

    def __init__(self, process_group: Optional[dist.ProcessGroup] = None,
                 named_parameters: Optional[Iterable[Tuple[str, torch.nn.Parameter]]] = None,
                 nonfinite: str = "error",
                 communicator: Optional[gradcomm.Communicator] = None,
                 bucket_bytes: int = 4 << 20, exchange: str = "compressor",
                 hierarchy: str = "flat"):
        self.process_group = process_group
        self._name = type(self).__name__  # in messages; OneBitAdam names itself here
        self.exchange = _exchange_choice(self._name, exchange, hierarchy)
        # A gradcomm Communicator (gradcomm.MpiCommunicator under mpirun) that carries the
        # hook's collectives instead of the process group.
        self.communicator = communicator
        self.nonfinite = _choice(self._name, "nonfinite", nonfinite, _NONFINITE_POLICIES)
        self.bucket_bytes = _number(self._name, "bucket_bytes", bucket_bytes, int)
        if self.bucket_bytes < 1:
            raise _invalid(f"bucket_bytes must be a positive integer, got {bucket_bytes!r}")
        # Keys: parameter names when given (checkpoints then survive any change of bucket
        # layout); otherwise the order in which DDP's first iteration hands parameters to
        # the hook, which is deterministic for a given model and bucket_cap_mb.
        self._names: Optional[Dict[torch.Tensor, str]] = None
        if named_parameters is not None:
            self._names = {p: name for name, p in named_parameters}
        self._exchanger = None
        self._layer_of: Dict[torch.Tensor, int] = {}
        # Buckets not yet submitted: the first backward's, until its last bucket.
        self._held: List[Tuple[torch.Tensor, list, tuple, torch.futures.Future]] = []
        self._waiting: List[Tuple[torch.futures.Future, torch.Tensor]] = []  # this step
        self._pending_state: Optional[dict] = None  # loaded before the Exchanger exists
        self._expected_world_size: Optional[int] = None
        self._checked = False
        self._in_step = False
        self.iteration = 0
        self.epoch = 0
        self.last_stats: Optional[dict] = None
        # Bytes this rank sent, all steps, by the algorithm model of gradcomm's
        # Communicator traffic counters (ring allreduce 2(p-1)/p * n, allgather (p-1) * n).
        self.bytes_sent = 0

    # ---- what subclasses provide ------------------------------------------------------
    def _make_compressor(self) -> gradcomm.Compressor:
        raise NotImplementedError

    def _keep_settings(self, arguments: dict) -> None:
        """Keeps the constructor's `arguments` named in ``_kinds`` as attributes, each checked
        for its kind (an error naming it, where pybind11 would print its signature), then makes
        the compressor once, whose C++ options check the values now, not at the first
        backward."""
        for name, kind in self._kinds.items():
            value = arguments[name]
            if isinstance(kind, tuple):
                value = _choice(self._name, name, value, kind)
            elif kind is bool:
                value = bool(value)
            elif kind is not None:
                value = _number(self._name, name, value, kind)
            setattr(self, name, value)
        self._make_compressor()

    def _settings(self) -> dict:
        """The settings as state_dict() saves them and the ranks compare them."""
        values = {name: getattr(self, name) for name in self._kinds}
        return {name: list(v) if isinstance(v, tuple) else v for name, v in values.items()}

    def _epoch_driven(self) -> bool:
        """Whether set_epoch() is forwarded to the compressor (False when it follows the
        step count instead)."""
        return True

    def _on_built(self) -> None:
        """Called once the Exchanger exists (L-GreCo builds its planner here)."""

    def _after_step(self) -> None:
        """Called on every rank after each step's Exchanger.finish_step(); may run its own
        blocking collectives, which every rank then issues in the same order."""

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, extra: dict) -> None:
        pass

    # ---- group ------------------------------------------------------------------------
    def _group(self):
        return self.process_group if self.process_group is not None else dist.group.WORLD

    @property
    def world_size(self) -> int:
        if self.communicator is not None:
            return self.communicator.size
        return dist.get_world_size(self._group())

    @property
    def rank(self) -> int:
        if self.communicator is not None:
            return self.communicator.rank
        return dist.get_rank(self._group())

    def _check_group(self) -> None:
        """Before the first collective: the hook's group must be DDP's group. A subgroup
        would make some ranks wait in collectives the others never join; every rank
        detects the mismatch locally, so all of them raise and none hangs."""
        if self._checked:
            return
        if not dist.is_initialized():
            raise RuntimeError(f"{self._name}: torch.distributed is not initialized")
        _check_group_size(self, self._expected_world_size or dist.get_world_size())
        self._checked = True

    # ---- the model's layers --------------------------------------------------------------
    @property
    def compressor(self) -> Optional[gradcomm.Compressor]:
        """The model's compressor (None before the first backward)."""
        return None if self._exchanger is None else self._exchanger.compressor

    @property
    def plan(self) -> str:
        """The exchange plan as a table (the links measured at setup, per layer the
        predicted milliseconds of each exchange and the choice); empty with
        exchange="compressor" or before the first backward."""
        return "" if self._exchanger is None else self._exchanger.plan

    @property
    def layer_names(self) -> List[str]:
        """The registered layers' keys, in registration order (empty before the first
        backward)."""
        return [] if self._exchanger is None else [l.name for l in self._exchanger.layers]

    def _build(self, params_in_hook_order: list) -> None:
        """Registers every parameter the first backward handed over, in forward order:
        named_parameters' order when given, else the order DDP's first backward hands them
        over in: one bucket in the model's forward order on the torch versions tested (1.13,
        2.x). Forward order matters for speed: a step's collectives start in backward order,
        each as soon as its layers are encoded."""
        params = list(params_in_hook_order)
        keys = [f"param{i}" for i in range(len(params))]
        if self._names is not None:
            for p in params:
                if p not in self._names:
                    raise _invalid(f"{self._name}: DDP holds a parameter of shape "
                                   f"{tuple(p.shape)} that is not among named_parameters")
            rank_of = {p: i for i, p in enumerate(self._names)}
            params.sort(key=rank_of.__getitem__)
            keys = [self._names[p] for p in params]
        layers = [gradcomm.LayerSpec(key, p.numel(), max(p.dim(), 1),
                                     dtype=_dtype_name(p.dtype),
                                     device=p.device.type, device_index=p.device.index or 0)
                  for key, p in zip(keys, params)]
        comm = self.communicator
        if comm is None:
            comm = torch_communicator(self._group(), "cuda" if params[0].is_cuda else "cpu")
        # The settings in the words the user wrote them (the Exchanger then agrees on the
        # compressor's own, and on the layers).
        words = [f"{key}={value if isinstance(value, str) else repr(value)}".replace(" ", "")
                 for key, value in
                 [("hook", self._kind), ("nonfinite", self.nonfinite),
                  ("bucket_bytes", self.bucket_bytes), ("exchange", self.exchange)]
                 + sorted(self._settings().items())]
        _native.check_agreement(comm, " ".join(words), f"{self._name} settings")
        compressor = self._make_compressor()
        # Every step's layout is agreed before its first collective: a schedule moved on
        # one rank only (set_epoch, load_state_dict) fails on every rank, never hangs.
        self._exchanger = _native.Exchanger(comm, compressor, layers, self.bucket_bytes,
                                            self.nonfinite, agree_every_step=True,
                                            exchange=self.exchange)
        self._layer_of = {p: i for i, p in enumerate(params)}
        failure = None
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            try:
                self._restore(state)
            except (gradcomm.Error, ValueError) as error:
                failure = error
        # A state that one rank could not restore ends the job on every rank.
        verdict = "failed" if failure is not None else "ok"
        try:
            self._exchanger.check_agreement(f"restored={verdict}",
                                            f"{self._name} restoring load_state_dict()")
        except gradcomm.Error:
            if failure is None:
                raise
        if failure is not None:
            raise failure
        self._exchanger.restore_step(self.iteration)
        if self._epoch_driven():
            self._exchanger.compressor.set_epoch(self.epoch)
        self._on_built()

    def set_epoch(self, epoch: int) -> None:
        """Advances epoch-based schedules (DGC's sparsity warm-up). Call it at the start of
        each epoch on every rank, like DistributedSampler.set_epoch."""
        self.epoch = int(epoch)
        if self._exchanger is not None and self._epoch_driven():
            self._exchanger.compressor.set_epoch(self.epoch)

    # ---- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict:
        """This rank's shard: the settings, the epoch, and the C++ checkpoint shard (the
        step, the compressor's state - residuals, momenta, plan - and the registered
        layers, under CRC32C checksums). Save one file per rank."""
        if self._exchanger is not None:
            shard = self._exchanger.save_shard()
        else:  # before the first backward: what was loaded, if anything
            shard = None if self._pending_state is None else self._pending_state["shard"]
        return {"kind": self._kind, "version": STATE_VERSION, "settings": self._settings(),
                "exchange": self.exchange, "epoch": self.epoch, "shard": shard,
                "extra": self._extra_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restores a shard saved by ``state_dict()`` on the same rank of a job of the same
        size with the same settings and layers. The shard's checksums, rank, world size,
        compressor and layers are checked now (the layers against ``named_parameters``
        before the first backward, when given); it is applied when the Exchanger exists."""
        name = self._name
        version = state.get("version", 1) if isinstance(state, dict) else None
        if version != STATE_VERSION:
            raise _invalid(
                f"{name}.load_state_dict: the state_dict has version {version} (gradcomm 0.1 "
                f"kept one compressor per parameter); this gradcomm reads version "
                f"{STATE_VERSION} (one compressor per model). Residuals and momenta of a "
                "version-1 shard cannot be carried over: start the hook state afresh")
        if state.get("kind") != self._kind:
            raise _invalid(f"{name}.load_state_dict: a {state.get('kind')!r} state, "
                           f"expected {self._kind!r}")
        if state.get("settings") != self._settings():
            raise _invalid(f"{name}.load_state_dict: settings differ: saved "
                           f"{state.get('settings')}, here {self._settings()}")
        # States saved before the exchange was a setting used the compressor's own.
        saved_exchange = state.get("exchange", "compressor")
        if saved_exchange != self.exchange:
            raise _invalid(f"{name}.load_state_dict: saved with exchange={saved_exchange!r}, "
                           f"this state has exchange={self.exchange!r}: the shard's plan and "
                           "regions belong to the exchange it was saved with")
        if self._exchanger is not None:
            self._restore(state)
            return
        step = 0
        if state["shard"] is not None:
            # With named_parameters the layers are known now: the shard's are checked too.
            here = None if self._names is None else [
                (n, p.numel(), _dtype_name(p.dtype))
                for p, n in self._names.items() if p.requires_grad]
            step = _native.read_shard(state["shard"], self.rank, self.world_size,
                                      self._make_compressor().name,
                                      f"{name}.load_state_dict on rank {self.rank}", here)["step"]
        self._pending_state = dict(state)
        self.iteration, self.epoch = step, int(state["epoch"])

    def _restore(self, state: dict) -> None:
        self._load_extra_state(state.get("extra", {}))
        if state["shard"] is not None:
            self._exchanger.load_shard(state["shard"],
                                       f"{self._name}.load_state_dict on rank {self.rank}")
        self.iteration, self.epoch = self._exchanger.step, int(state["epoch"])
        if self._epoch_driven():
            self._exchanger.compressor.set_epoch(self.epoch)

    # ---- one bucket -----------------------------------------------------------------------
    def _submit(self, params: list, grads: tuple) -> None:
        for p, grad in zip(params, grads):
            layer = self._layer_of.get(p)
            if layer is None:
                raise _invalid(f"{self._name}: a parameter of shape {tuple(p.shape)} was not "
                               "in DDP's first backward, so it is not registered")
            self._exchanger.submit(layer, grad, grad)

    def _begin_step(self) -> None:
        self._in_step = True
        if self._exchanger.device == "cuda":  # kernels on torch's stream, as DDP's own work
            self._exchanger.set_stream(torch.cuda.current_stream().cuda_stream)
        self._exchanger.begin_step()

    def _finish_step(self) -> None:
        """At the last bucket: waits for the collectives, decodes every update into its
        bucket and completes the step's futures; raises (every rank alike) on a non-finite
        gradient under the 'error' policy."""
        waiting, self._waiting = self._waiting, []
        self._in_step = False
        try:
            stats = self._exchanger.finish_step()
        except BaseException as error:
            for future, _ in waiting:
                future.set_exception(error)
            raise
        self.iteration = self._exchanger.step
        self.bytes_sent += stats["wire_bytes"]
        self.last_stats = stats
        self._after_step()
        for future, buffer in waiting:
            future.set_result(buffer)

    def _exchange(self, bucket) -> torch.futures.Future:
        buffer, params, grads = _gradients(bucket, self._name)
        self._check_group()
        future = torch.futures.Future()
        self._held.append((buffer, params, grads, future))
        if self._exchanger is None and not bucket.is_last():
            return future
        held, self._held = self._held, []
        if self._exchanger is None:
            self._build([p for _, ps, _, _ in held for p in ps])
        if not self._in_step:
            self._begin_step()
        for buf, ps, gs, fut in held:
            self._submit(ps, gs)
            self._waiting.append((fut, buf))
        if bucket.is_last():
            self._finish_step()
        return future


def register_comm_hook(model: torch.nn.parallel.DistributedDataParallel,
                       state: CompressedHookState, hook,
                       optimizer: Optional[torch.optim.Optimizer] = None) -> None:
    """``model.register_comm_hook(state, hook)``, after checking that the state's process
    group is the one DDP runs on (same size, this rank a member) and, when ``optimizer``
    is given and the state can tell, that the optimizer suits the hook's output (DGC:
    SGD without momentum). Needed, instead of the plain call, only when DDP runs on a
    subgroup; it checks the same things either way. Works for every gradcomm state,
    OneBitAdam included."""
    if optimizer is not None and hasattr(state, "check_optimizer"):
        state.check_optimizer(optimizer)
    checked = getattr(state, "_hook_state", state)  # OneBitAdam checks through its dense part
    checked._expected_world_size = _check_group_size(checked, model.process_group.size())
    model.register_comm_hook(state, hook)


def _check_group_size(state: CompressedHookState, ddp_size: int) -> int:
    """Raises unless this rank is in the state's group (or communicator) and it has DDP's
    number of ranks; returns that number."""
    if state.communicator is None and dist.get_rank(state._group()) < 0:
        raise _invalid(f"{state._name}: global rank {dist.get_rank()} is not a member of the "
                       f"hook's process group, but DDP runs it ({ddp_size} ranks)")
    if state.world_size != ddp_size:
        raise _invalid(
            f"{state._name}: the hook's process group has {state.world_size} ranks but DDP's "
            f"has {ddp_size} (global rank {dist.get_rank()}); pass DDP's process group to the "
            "state, or register with gradcomm.torch.register_comm_hook(model, state, hook) "
            "when DDP itself runs on a subgroup")
    return ddp_size
