"""torch.distributed as a gradcomm Communicator backend: lets C++ algorithms that run
their own collectives (the 1-bit compressed allreduce) communicate over the process group
DDP already uses. Buffers arrive as numpy arrays over gradcomm's memory and are wrapped
with torch.from_numpy, so nothing is copied on the way."""

import torch
import torch.distributed as dist

import gradcomm._gradcomm as _native

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


class TorchGroupBackend:
    """The five blocking collectives PythonCommunicator calls, on one process group."""

    def __init__(self, group):
        self.group = group
        self.size = dist.get_world_size(group)

    def __repr__(self):
        return f"torch.distributed {dist.get_backend(self.group)}, {self.size} ranks"

    def allreduce(self, send, recv, op):
        out = torch.from_numpy(recv)
        if send.__array_interface__["data"][0] != recv.__array_interface__["data"][0]:
            out.copy_(torch.from_numpy(send))
        dist.all_reduce(out, op=_OPS[op], group=self.group)

    def allgather(self, send, recv):
        outs = list(torch.from_numpy(recv).view(self.size, -1).unbind(0))
        dist.all_gather(outs, torch.from_numpy(send), group=self.group)

    def alltoall(self, send, recv):
        dist.all_to_all_single(torch.from_numpy(recv), torch.from_numpy(send), group=self.group)

    def broadcast(self, buffer, root):
        src = root
        if self.group is not dist.group.WORLD:  # torch wants the root's global rank
            to_global = getattr(dist, "get_global_rank", None)
            src = (to_global or dist.distributed_c10d._get_global_rank)(self.group, root)
        dist.broadcast(torch.from_numpy(buffer), src=src, group=self.group)

    def barrier(self):
        dist.barrier(group=self.group)


def communicator(group) -> _native.Communicator:
    """A gradcomm Communicator over `group` (None: the world group)."""
    group = group if group is not None else dist.group.WORLD
    return _native.PythonCommunicator(TorchGroupBackend(group), dist.get_rank(group),
                                      dist.get_world_size(group))
