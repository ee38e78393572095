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


class TorchGroupBackend:
    """The collectives PythonCommunicator calls, on one process group. Each returns the
    torch.distributed Work of the collective it started."""

    def __init__(self, group):
        self.group = group
        self.size = dist.get_world_size(group)

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
        outs = list(from_dlpack(recv).view(self.size, -1).unbind(0))
        return dist.all_gather(outs, from_dlpack(send), group=self.group, async_op=True)

    def alltoall(self, send, recv):
        return dist.all_to_all_single(from_dlpack(recv), from_dlpack(send), group=self.group,
                                      async_op=True)

    def alltoallv(self, send, recv, counts):
        send_counts, recv_counts = counts
        return dist.all_to_all_single(from_dlpack(recv), from_dlpack(send),
                                      output_split_sizes=list(recv_counts),
                                      input_split_sizes=list(send_counts), group=self.group,
                                      async_op=True)

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
