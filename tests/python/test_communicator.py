"""gradcomm's Communicator over torch.distributed (PythonCommunicator): what the C++
algorithms with their own collectives (1-bit allreduce, layer agreement) run on inside a
DDP hook. Three ranks, so nothing divides evenly by accident."""

import numpy as np
import torch

from ddp_harness import run_ranks


def _collectives(rank, world):
    from gradcomm.torch._comm import communicator

    comm = communicator(None)
    out = {}
    x = torch.arange(5, dtype=torch.float32) + 10 * rank
    r = torch.empty(5)
    comm.allreduce(x, r)
    out["sum"] = r.tolist()
    big = np.array([2**31 + rank, 7 - rank], dtype=np.uint32)  # above int32's range
    got = np.empty(2, dtype=np.uint32)
    comm.allreduce(big, got, "max")
    out["max_u32"] = got.tolist()
    gathered = torch.empty(3 * world, dtype=torch.int32)
    comm.allgather(torch.full((3,), rank, dtype=torch.int32), gathered)
    out["allgather"] = gathered.tolist()
    # Blocks at the most the backend sends as one alltoall round, and one element over it
    # (gloo's ring allgather): the same result either way.
    from gradcomm.torch._comm import TorchGroupBackend
    at_limit = TorchGroupBackend.SMALL_ALLGATHER_BYTES // (4 * world)
    out["large_allgathers"] = []
    for n in (at_limit, at_limit + 1):
        whole = torch.empty(n * world, dtype=torch.int32)
        comm.allgather(torch.arange(n, dtype=torch.int32) + n * rank, whole)
        out["large_allgathers"].append(torch.equal(whole, torch.arange(n * world, dtype=torch.int32)))
    counts = [r + 1 for r in range(world)]
    vrecv = torch.empty(sum(counts), dtype=torch.float16)
    comm.allgatherv(torch.full((rank + 1,), float(rank), dtype=torch.float16), vrecv, counts)
    out["allgatherv"] = vrecv.tolist()
    send = torch.tensor([100 * rank + j for j in range(2 * world)], dtype=torch.uint8)
    recv = torch.empty(2 * world, dtype=torch.uint8)
    comm.alltoall(send, recv)
    out["alltoall"] = recv.tolist()
    # Uneven parts, one of them empty: rank r sends (r + d) % 3 elements to rank d.
    vsend_counts = [(rank + d) % 3 for d in range(world)]
    vrecv_counts = [(s + rank) % 3 for s in range(world)]
    vsend = torch.tensor([100 * rank + 10 * d + j for d in range(world)
                          for j in range(vsend_counts[d])], dtype=torch.int32)
    vrecv = torch.full((sum(vrecv_counts),), -1, dtype=torch.int32)
    comm.alltoallv(vsend, vsend_counts, vrecv, vrecv_counts)
    out["alltoallv"] = vrecv.tolist()
    b = torch.full((4,), float(rank))
    comm.broadcast(b, 2)
    out["broadcast"] = b.tolist()
    comm.barrier()
    out["collectives"] = comm.collectives
    return out


def test_python_communicator_collectives():
    world = 3
    results = run_ranks(_collectives, world)
    for rank, out in enumerate(results):
        assert out["sum"] == [3 * i + 30 for i in range(5)]
        assert out["max_u32"] == [2**31 + 2, 7]
        assert out["allgather"] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        assert out["large_allgathers"] == [True, True]
        assert out["allgatherv"] == [0.0, 1.0, 1.0, 2.0, 2.0, 2.0]
        # Rank r receives chunk r of every rank's send, in rank order.
        assert out["alltoall"] == [(100 * src + 2 * rank + j) % 256
                                   for src in range(world) for j in range(2)]
        assert out["alltoallv"] == [100 * src + 10 * rank + j for src in range(world)
                                    for j in range((src + rank) % 3)]
        assert out["broadcast"] == [2.0] * 4
        assert out["collectives"] >= 6


def _empty_gathers(rank, world):
    from gradcomm.torch._comm import communicator

    comm = communicator(None)
    # What the layer agreement does when it explains a schedule mismatch: zero records
    # from every rank. gloo's all_gather of zero bytes kills the process with SIGFPE.
    comm.allgatherv(torch.empty(0, dtype=torch.int32), torch.empty(0, dtype=torch.int32),
                    [0] * world)
    comm.allgather(torch.empty(0), torch.empty(0))
    after = torch.empty(world, dtype=torch.int32)
    comm.allgather(torch.full((1,), rank, dtype=torch.int32), after)  # still in step
    return after.tolist()


def test_zero_byte_gathers_are_no_ops_on_every_rank():
    for gathered in run_ranks(_empty_gathers, 3, timeout=60):
        assert gathered == [0, 1, 2]
