"""Shared fixtures of the gradcomm Python tests: real DDP jobs with the gloo backend, one
process per rank on 127.0.0.1, forked from the test process (cheap: torch is already
imported, and the parent never starts a thread pool before forking)."""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "examples"))


@pytest.fixture(scope="session")
def repo_root():
    return REPO


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "accuracy: trains the digits CNN on 4 processes (about 1-2 minutes on 2 "
        "cores); deselect with -m 'not accuracy'")
