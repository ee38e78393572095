"""The machinery every gradcomm DDP hook shares.

A hook state keeps one gradcomm ``Compressor`` per parameter, keyed by the parameter
itself (never by ``bucket.index()``, which changes when DDP rebuilds its buckets after the
first iteration). For each bucket and step it asks every parameter's compressor for its
wire (a summable allreduce payload, or opaque bytes to allgather), encodes all of them into
two flat buffers, runs at most one allreduce per wire dtype and one allgather through the
process group DDP uses, and decodes into the bucket buffer, which the hook's future
returns. Buffers are kept per bucket and only grow, so steady-state steps allocate no
tensor storage.

Non-finite gradients: compressors count them and treat them as 0. Every rank adds a
status (one element at the end of each allreduce buffer, a header word per rank in the
allgather), so after the collectives every rank knows how many ranks met one and applies
the same policy: ``"error"`` raises on every rank, ``"skip_step"`` returns a zero update,
``"zero"`` carries on.
"""

import dataclasses
from typing import Dict, Iterable, Optional, Tuple

import torch
import torch.distributed as dist

import gradcomm
import gradcomm._gradcomm as _native

_NONFINITE_POLICIES = ("error", "skip_step", "zero")
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "uint8": torch.uint8}
_ALIGN = 8  # every payload starts 8-byte aligned: packed indices and values are read in place
# The allgather block of each rank starts with [int32 non-finite count, int32 padding].
_HEADER_BYTES = 8


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class _Arena:
    """A grow-only flat buffer of one dtype; views are cut from its front."""

    def __init__(self, dtype: torch.dtype, device: torch.device):
        self.dtype = dtype
        self.device = device
        self.storage = torch.empty(0, dtype=dtype, device=device)

    def take(self, numel: int) -> torch.Tensor:
        if self.storage.numel() < numel:
            # Grow with headroom so a schedule that raises payloads step by step (sparsity
            # warm-up) reallocates a few times, not every step.
            self.storage = torch.empty(max(numel, self.storage.numel() * 3 // 2),
                                       dtype=self.dtype, device=self.device)
        return self.storage[:numel]


@dataclasses.dataclass
class _Entry:
    """One parameter: its key, its compressor (set up for a single layer), its size."""

    key: str
    compressor: gradcomm.Compressor
    numel: int
    ndim: int


class _BucketBuffers:
    """Per-bucket scratch: the allreduce payloads per dtype, the allgather send and receive
    blocks, and the per-layer rank-ordered copy the allgather decoder reads."""

    def __init__(self, device: torch.device):
        self.allreduce = {name: _Arena(dtype, device) for name, dtype in _TORCH_DTYPES.items()
                          if name != "uint8"}
        self.send = _Arena(torch.uint8, device)
        self.recv = _Arena(torch.uint8, device)
        self.gathered = _Arena(torch.uint8, device)


def _nonfinite_policy(policy: str) -> str:
    if policy not in _NONFINITE_POLICIES:
        raise ValueError(f"nonfinite must be one of {_NONFINITE_POLICIES}, got {policy!r}")
    return policy


class CompressedHookState:
    """Base of the gradcomm hook states: the process group, the per-parameter compressors,
    the step counter, and ``state_dict()`` / ``load_state_dict()`` of this rank's shard.

    Subclasses define ``_make_compressor()`` and ``_settings()``.
    """

    _kind = "base"

    def __init__(self, process_group: Optional[dist.ProcessGroup] = None,
                 named_parameters: Optional[Iterable[Tuple[str, torch.nn.Parameter]]] = None,
                 nonfinite: str = "error",
                 communicator: Optional[gradcomm.Communicator] = None):
        self.process_group = process_group
        # A gradcomm Communicator (gradcomm.MpiCommunicator under mpirun) that carries the
        # hook's collectives instead of the process group; they are then blocking.
        self.communicator = communicator
        self.nonfinite = _nonfinite_policy(nonfinite)
        # Keys: parameter names when given (checkpoints then survive any change of bucket
        # layout); otherwise the order in which DDP's first iteration hands parameters to
        # the hook, which is deterministic for a given model and bucket_cap_mb.
        self._names: Optional[Dict[torch.Tensor, str]] = None
        if named_parameters is not None:
            self._names = {p: name for name, p in named_parameters}
        self._entries: Dict[torch.Tensor, _Entry] = {}
        self._pending: Dict[str, bytes] = {}
        self._buffers: Dict[Tuple[str, ...], _BucketBuffers] = {}
        self._expected_world_size: Optional[int] = None
        self._checked = False
        self._name = type(self).__name__  # in messages; OneBitAdam names itself here
        self._in_step = False
        self._layouts_used: set = set()
        self.iteration = 0
        self.epoch = 0
        # Bytes this rank sent, all steps, by the algorithm model of gradcomm's
        # Communicator traffic counters (ring allreduce 2(p-1)/p * n, allgather (p-1) * n).
        self.bytes_sent = 0

    # ---- what subclasses provide ------------------------------------------------------
    def _make_compressor(self, numel: int, ndim: int, key: str) -> gradcomm.Compressor:
        raise NotImplementedError

    def _begin_step(self) -> None:
        """Called before the first bucket of every step (L-GreCo applies its plan here)."""

    def _before_encode(self, entries, grads) -> None:
        """Called with a bucket's parameters and local gradients before they are encoded."""

    def _after_last_bucket(self) -> None:
        """Called after the last bucket of a step has started its collectives; may run
        its own (blocking) collectives, which every rank then issues in the same order."""

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, extra: dict) -> None:
        pass

    def _epoch_driven(self) -> bool:
        """Whether set_epoch() is forwarded to the compressors (False when they follow the
        step count instead)."""
        return True

    def _settings(self) -> dict:
        raise NotImplementedError

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

    def _allreduce(self, buf: torch.Tensor) -> torch.futures.Future:
        """Sums `buf` across ranks in place."""
        if self.communicator is None:
            return dist.all_reduce(buf, group=self._group(), async_op=True).get_future()
        self.communicator.allreduce(buf, buf)
        return _completed(buf)

    def _allgather(self, send: torch.Tensor, recv: torch.Tensor) -> torch.futures.Future:
        """Row r of `recv` (world x len(send)) receives rank r's `send`."""
        if self.communicator is None:
            return dist.all_gather(list(recv.unbind(0)), send, group=self._group(),
                                   async_op=True).get_future()
        self.communicator.allgather(send, recv.view(-1))
        return _completed(recv)

    def _check_group(self) -> None:
        """Before the first collective: the hook's group must be DDP's group. A subgroup
        would make some ranks wait in collectives the others never join; every rank
        detects the mismatch locally, so all of them raise and none hangs."""
        if self._checked:
            return
        if not dist.is_initialized():
            raise RuntimeError(f"{self._name}: torch.distributed is not initialized")
        rank = self.rank
        expected = self._expected_world_size or dist.get_world_size()
        if rank < 0:
            raise ValueError(
                f"{self._name}: global rank {dist.get_rank()} is not a member of the "
                f"hook's process group, but DDP runs it (DDP world size {expected})")
        size = self.world_size
        if size != expected:
            raise ValueError(
                f"{self._name}: the hook's process group has {size} ranks but DDP's "
                f"has {expected} (global rank {dist.get_rank()}); pass DDP's process group to "
                "the state, or register with gradcomm.torch.register_comm_hook(model, state, "
                "hook) when DDP itself runs on a subgroup")
        self._checked = True

    # ---- per-parameter compressors ----------------------------------------------------
    def _entry(self, param: torch.Tensor) -> _Entry:
        entry = self._entries.get(param)
        if entry is not None:
            return entry
        if self._names is not None:
            if param not in self._names:
                raise ValueError(f"{self._name}: a parameter of shape "
                                 f"{tuple(param.shape)} is not among named_parameters")
            key = self._names[param]
        else:
            key = f"param{len(self._entries)}"
        numel, ndim = param.numel(), param.dim()
        compressor = self._make_compressor(numel, ndim, key)
        compressor.setup([gradcomm.LayerSpec(key, numel, max(ndim, 1))], self.world_size,
                         self.rank)
        if self._epoch_driven():
            compressor.set_epoch(self.epoch)
        blob = self._pending.pop(key, None)
        if blob is not None:
            compressor.load_state(blob)
        entry = _Entry(key, compressor, numel, ndim)
        self._entries[param] = entry
        return entry

    def set_epoch(self, epoch: int) -> None:
        """Advances epoch-based schedules (DGC's sparsity warm-up) on every parameter.
        Call it at the start of each epoch on every rank, like DistributedSampler.set_epoch."""
        self.epoch = int(epoch)
        if self._epoch_driven():
            for entry in self._entries.values():
                entry.compressor.set_epoch(self.epoch)

    # ---- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict:
        """This rank's shard: the step and epoch, the settings, and every parameter's
        compressor state (residuals, momenta, ...) as bytes. Save one file per rank."""
        compressors = {e.key: e.compressor.save_state() for e in self._entries.values()}
        compressors.update(self._pending)  # loaded but not yet seen: keep, don't drop
        return {"kind": self._kind, "settings": self._settings(), "iteration": self.iteration,
                "epoch": self.epoch, "rank": self.rank, "world_size": self.world_size,
                "compressors": compressors, "extra": self._extra_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restores a shard saved by ``state_dict()`` on the same rank of a job of the same
        size with the same settings. Parameters not seen yet pick up their state when the
        hook first meets them."""
        name = self._name
        if state.get("kind") != self._kind:
            raise ValueError(f"{name}.load_state_dict: a {state.get('kind')!r} state, "
                             f"expected {self._kind!r}")
        for field, mine in (("world_size", self.world_size), ("rank", self.rank)):
            if state.get(field) != mine:
                raise ValueError(f"{name}.load_state_dict: the shard was saved with "
                                 f"{field}={state.get(field)}, this process has {mine}")
        if state.get("settings") != self._settings():
            raise ValueError(f"{name}.load_state_dict: settings differ: saved "
                             f"{state.get('settings')}, here {self._settings()}")
        self.iteration = int(state["iteration"])
        self.epoch = int(state["epoch"])
        self._load_extra_state(state.get("extra", {}))
        blobs = dict(state["compressors"])
        for entry in self._entries.values():
            if self._epoch_driven():
                entry.compressor.set_epoch(self.epoch)
            if entry.key in blobs:
                entry.compressor.load_state(blobs.pop(entry.key))
        self._pending = blobs

    # ---- one bucket -----------------------------------------------------------------------
    def _exchange(self, bucket) -> torch.futures.Future[torch.Tensor]:
        self._check_group()
        if not self._in_step:
            self._in_step = True
            # Buffers of bucket layouts the last step did not use (DDP's layout before its
            # bucket rebuild) are freed; steady-state layouts keep theirs.
            for stale in set(self._buffers) - self._layouts_used:
                del self._buffers[stale]
            self._layouts_used = set()
            self._begin_step()
        buffer = bucket.buffer()
        if buffer.dtype != torch.float32:
            raise TypeError(f"{self._name}: gradcomm hooks take float32 gradients, "
                            f"the bucket holds {buffer.dtype} ({buffer.numel()} elements)")
        params = bucket.parameters()
        entries = [self._entry(p) for p in params]
        if sum(e.numel for e in entries) != buffer.numel():
            raise RuntimeError(f"{self._name}: bucket of {buffer.numel()} elements "
                               f"but its parameters have {sum(e.numel for e in entries)}")
        world = self.world_size
        keys = tuple(e.key for e in entries)
        grads = []
        offset = 0
        for e in entries:
            grads.append(buffer[offset:offset + e.numel])
            offset += e.numel
        self._before_encode(entries, grads)
        buffers = self._buffers.get(keys)
        if buffers is None:
            buffers = self._buffers[keys] = _BucketBuffers(buffer.device)
        self._layouts_used.add(keys)

        # Layout of this step's payloads (the same on every rank: wires depend only on
        # settings, step and layer).
        wires = []
        reduce_count = {"float32": 0, "float16": 0}
        gather_bytes = _HEADER_BYTES
        for e in entries:
            e.compressor.set_step(self.iteration)
            w = e.compressor.wire(0)
            if w.collective == "allreduce":
                wires.append((w, reduce_count[w.dtype]))
                reduce_count[w.dtype] += w.count
            else:
                wires.append((w, gather_bytes))
                gather_bytes += _align(w.nbytes)
        reduce_bufs = {dt: buffers.allreduce[dt].take(n + 1)
                       for dt, n in reduce_count.items() if n > 0}
        gathering = gather_bytes > _HEADER_BYTES
        send = buffers.send.take(gather_bytes) if gathering else None

        nonfinite = 0
        for e, (w, at), grad in zip(entries, wires, grads):
            if w.collective == "allreduce":
                payload = reduce_bufs[w.dtype][at:at + w.count]
            else:
                payload = send[at:at + w.nbytes]
            nonfinite += e.compressor.encode(0, grad, payload)

        futures = []
        for dt, buf in reduce_bufs.items():
            buf[-1] = 1.0 if nonfinite else 0.0
            futures.append(self._allreduce(buf))
            self.bytes_sent += _native.allreduce_wire_bytes(buf.numel() * buf.element_size(),
                                                            world)
        recv = None
        if gathering:
            send[:_HEADER_BYTES].view(torch.int32)[0] = min(nonfinite, 2**31 - 1)
            recv = buffers.recv.take(world * gather_bytes).view(world, gather_bytes)
            futures.append(self._allgather(send, recv))
            self.bytes_sent += _native.allgather_wire_bytes(gather_bytes, world)
        step = self.iteration
        if bucket.is_last():
            self._after_last_bucket()
            self.iteration += 1
            self._in_step = False

        def finish(_):
            bad_ranks = 0
            for buf in reduce_bufs.values():
                bad_ranks = max(bad_ranks, int(round(float(buf[-1]))))
            if recv is not None:
                counts = recv[:, :4].contiguous().view(torch.int32).flatten()
                bad_ranks = max(bad_ranks, int((counts > 0).sum()))
            if bad_ranks and self.nonfinite != "zero":
                if self.nonfinite == "error":
                    raise gradcomm.Error(
                        f"gradcomm: non-finite value: {bad_ranks} of {world} ranks met NaN or "
                        f"Inf in the gradients of {list(keys)} at step {step} (rank "
                        f"{self.rank}); nonfinite='skip_step' or 'zero' tolerates it")
                buffer.zero_()
                return buffer
            gathered = None
            for e, (w, at), out in zip(entries, wires, grads):
                if w.collective == "allreduce":
                    e.compressor.decode(0, reduce_bufs[w.dtype][at:at + w.count], out)
                else:
                    if gathered is None:
                        gathered = buffers.gathered.take(world * max(
                            ww.nbytes for ww, _ in wires if ww.collective == "allgather"))
                    rows = gathered[:world * w.nbytes].view(world, w.nbytes)
                    rows.copy_(recv[:, at:at + w.nbytes])
                    e.compressor.decode(0, rows.view(-1), out)
            return buffer

        if len(futures) == 1:
            return futures[0].then(finish)
        return torch.futures.collect_all(futures).then(finish)


def _completed(value: torch.Tensor) -> torch.futures.Future:
    future = torch.futures.Future()
    future.set_result(value)
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
    ddp_size = model.process_group.size()
    checked = getattr(state, "_hook_state", state)  # OneBitAdam checks through its dense part
    mine = checked._group()
    if checked.communicator is not None:
        if checked.world_size != ddp_size:
            raise ValueError(f"{checked._name}: its communicator has {checked.world_size} "
                             f"ranks but DDP's group has {ddp_size}")
    elif dist.get_rank(mine) < 0:
        raise ValueError(f"{checked._name}: global rank {dist.get_rank()} is not a member "
                         f"of the hook's process group, but DDP runs it ({ddp_size} ranks)")
    elif dist.get_world_size(mine) != ddp_size:
        raise ValueError(f"{checked._name}: the hook's process group has "
                         f"{dist.get_world_size(mine)} ranks but DDP's has {ddp_size} "
                         f"(global rank {dist.get_rank()})")
    checked._expected_world_size = ddp_size
    model.register_comm_hook(state, hook)

