"""The start the DDP benchmarks share under mpirun: rank and size from Open MPI's
environment, gloo on the interface bench/netem gives each emulated host, and a file store
that every rank of the job can see."""

import datetime
import os
import tempfile

import torch.distributed as dist


def init_gloo_job(name: str, store: str = "", timeout_s: float = 1800.0):
    """Joins this MPI job's ranks in a gloo process group; returns (rank, world size, the
    store's path). `name` tells the store files of different benchmarks apart; `store`
    overrides the path."""
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("RANK", "0")))
    world = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    # Under bench/netem each rank's namespace has one interface, eth0; elsewhere loopback.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "eth0" if os.path.exists("/sys/class/net/eth0") else "lo")
    job = os.environ.get("PMIX_NAMESPACE", os.environ.get("OMPI_MCA_ess_base_jobid", "local")).replace("/", "_")
    # /tmp itself for several ranks: under bench/netem each emulated host has its own
    # TMPDIR, and the ranks must share the store's file.
    store = store or os.path.join(tempfile.gettempdir() if world == 1 else "/tmp", f"{name}-{job}")
    dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return rank, world, store
