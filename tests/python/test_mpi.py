"""The hooks with gradcomm's own MPI communicator in a job started by mpirun (only in
builds with MPI: install with --config-settings=cmake.define.GRADCOMM_WITH_MPI=ON)."""

import os
import shutil
import subprocess
import sys

import pytest

import gradcomm
from torch_ddp_digits import free_port

MPIRUN = shutil.which("mpirun")


@pytest.mark.skipif(not gradcomm.HAVE_MPI, reason="gradcomm built without MPI")
@pytest.mark.skipif(MPIRUN is None, reason="no mpirun")
def test_hooks_over_mpi_match_the_process_group():
    flags = ["--oversubscribe", "--bind-to", "none"]
    if os.geteuid() == 0:
        flags.append("--allow-run-as-root")
    job = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpi_job.py")
    env = dict(os.environ, GRADCOMM_TEST_PORT=str(free_port()))
    done = subprocess.run([MPIRUN, "-np", "2", *flags, sys.executable, job], env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("match the process group") == 2
