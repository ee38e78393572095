"""torch.distributed as a gradcomm Communicator backend: the Exchanger that every hook
drives, and the C++ algorithms that run their own collectives (the 1-bit compressed
allreduce, L-GreCo's table agreement, the setup agreement), communicate over the process
group DDP already uses. Buffers arrive as DLPack capsules over gradcomm's memory and are
imported without a copy; each collective is started asynchronously and its
torch.distributed Work is handed back to C++, which waits on it only when it needs the
result. This module only moves buffers: no algorithm lives here."""

import torch
import torch.distributed as dist
from torch.utils.dlpack import from_dlpack

import gradcomm._gradcomm as _native

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


class _StagedWork:
    """A collective run on pinned host copies of device buffers: waiting copies the result
    back to the device (on torch's current stream) once the host collective is done."""

    def __init__(self, work, copy_back):
        self._work, self._copy_back = work, copy_back

    def wait(self):
        self._work.wait()
        if self._copy_back is not None:
            copy_back, self._copy_back = self._copy_back, None
            copy_back()
        return True

    def is_completed(self):
        return self._work.is_completed() and self._copy_back is None


class TorchGroupBackend:
    """The collectives PythonCommunicator calls, on one process group. Each returns the
    torch.distributed Work of the collective it started. On a gloo group, collectives gloo
    cannot run on CUDA tensors (allgather, alltoall) go through pinned host copies, and a
    small allgather travels as one alltoall round (see `allgather`). Several collectives
    of a step are in flight at once, so each gets its own staging tensors (the Work keeps
    them alive); torch's caching allocators hand the same memory back step after step."""

    #: On gloo, an allgather that delivers at most this many bytes to each rank is sent as
    #: an alltoall of the block repeated for every rank: gloo's allgather passes blocks
    #: around a ring, p - 1 hops one after another, where an alltoall sends them all in
    #: one round; same bytes on the wire. bench/gloo_small_collectives.py on 4 emulated
    #: hosts at 1 Gbit/s sharing 2 cores: about half the time for blocks of 16 bytes to 64
    #: KiB (256 KiB received); from 256 KiB blocks the ring is as fast or faster
    #: (docs/benchmarks.md).
    SMALL_ALLGATHER_BYTES = 256 << 10

    def __init__(self, group):
        self.group = group
        self.size = dist.get_world_size(group)
        self._stage_on_host = dist.get_backend(group) == "gloo"

    def _staged(self, send: torch.Tensor, recv: torch.Tensor, run):
        """Runs `run(host_send, host_recv)` on pinned copies when gloo cannot take the
        device tensors; returns its Work, which copies the result back when waited."""
        if not (self._stage_on_host and recv.is_cuda):
            return run(send, recv)
        host_send = torch.empty(send.shape, dtype=send.dtype, pin_memory=True)
        host_send.copy_(send)  # a synchronous copy: the data is on the host before gloo reads it
        host_recv = torch.empty(recv.shape, dtype=recv.dtype, pin_memory=True)
        return _StagedWork(run(host_send, host_recv), lambda: recv.copy_(host_recv))

    def __repr__(self):
        return f"torch.distributed {dist.get_backend(self.group)}, {self.size} ranks"

    def allreduce(self, send, recv, op):
        out = from_dlpack(recv)
        if send is not recv:
            src = from_dlpack(send)
            if src.data_ptr() != out.data_ptr():
                out.copy_(src)
        return dist.all_reduce(out, op=_OPS[op], group=self.group, async_op=True)

    def allgather(self, send, recv):
        def run(send, recv):
            if self._stage_on_host and recv.numel() * recv.element_size() <= self.SMALL_ALLGATHER_BYTES:
                # The repeated block is a new tensor of at most SMALL_ALLGATHER_BYTES.
                return dist.all_to_all_single(recv, send.repeat(self.size), group=self.group,
                                              async_op=True)
            outs = list(recv.view(self.size, -1).unbind(0))
            return dist.all_gather(outs, send, group=self.group, async_op=True)
        return self._staged(from_dlpack(send), from_dlpack(recv), run)

    def alltoall(self, send, recv):
        def run(send, recv):
            return dist.all_to_all_single(recv, send, group=self.group, async_op=True)
        return self._staged(from_dlpack(send), from_dlpack(recv), run)

    def alltoallv(self, send, recv, counts):
        send_counts, recv_counts = counts

        def run(send, recv):
            return dist.all_to_all_single(recv, send, output_split_sizes=list(recv_counts),
                                          input_split_sizes=list(send_counts), group=self.group,
                                          async_op=True)
        return self._staged(from_dlpack(send), from_dlpack(recv), run)

    def broadcast(self, buffer, root):
        src = root
        if self.group is not dist.group.WORLD:  # torch wants the root's global rank
            to_global = getattr(dist, "get_global_rank", None)
            src = (to_global or dist.distributed_c10d._get_global_rank)(self.group, root)
        return dist.broadcast(from_dlpack(buffer), src=src, group=self.group, async_op=True)

    def barrier(self):
        return dist.barrier(group=self.group, async_op=True)


def communicator(group, device: str = "cpu") -> _native.Communicator:
    """A gradcomm Communicator over `group` (None: the world group) for buffers on
    `device` ("cpu" or "cuda")."""
    group = group if group is not None else dist.group.WORLD
    return _native.PythonCommunicator(TorchGroupBackend(group), dist.get_rank(group),
                                      dist.get_world_size(group), device)
