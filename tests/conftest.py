"""Shared fixtures. Every test node gets its own loopback address (tests/harness/addresses.py)
so that the product's real port numbers can be used by several nodes, tests and test
runs on one machine at once."""

from __future__ import annotations

import signal
from pathlib import Path

import psutil
import pytest

from tests.harness.addresses import allocate_loopback_ip


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    """A run stopped by SIGTERM (a CI timeout, `timeout`) tears its fixtures down, as Ctrl-C does."""
    signal.signal(signal.SIGTERM, _interrupt)


def pytest_unconfigure(config):
    """End every process a test started and left behind (etcd, Envoy, agents, moto):
    an interrupted run must not leave servers holding the next run's addresses."""
    left = psutil.Process().children(recursive=True)
    for proc in left:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(left, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture
def node_ip() -> str:
    """A fresh loopback address for one test node."""
    return allocate_loopback_ip()


@pytest.fixture
def ip_factory():
    """Call it to get one more fresh loopback address (for multi-node tests)."""
    return allocate_loopback_ip


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A node's --data-dir."""
    d = tmp_path / "data"
    d.mkdir()
    return d
