"""Shared fixtures. Every test node gets its own loopback address so that the
product's real port numbers (8080, 8081, 8001, 8090, 8500, 8501) can be used by
several nodes, tests and test runs on one machine at once."""

from __future__ import annotations

import random
import signal
import socket
from pathlib import Path

import psutil
import pytest

NODE_PORTS = (8080, 8081, 8001, 8090, 8500, 8501, 8502, 9000)


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


def _ip_is_free(ip: str) -> bool:
    for port in NODE_PORTS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((ip, port))
            except OSError:
                return False
    return True


def allocate_loopback_ip() -> str:
    """A 127.x.y.z address whose node ports are all free (127.0.0.0/8 is all local on Linux)."""
    rng = random.Random()
    for _ in range(200):
        ip = f"127.{rng.randint(20, 250)}.{rng.randint(0, 255)}.{rng.randint(2, 254)}"
        if _ip_is_free(ip):
            return ip
    raise RuntimeError("no free loopback address found")


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
