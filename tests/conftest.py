"""Shared fixtures. Every test node gets its own loopback address (tests/harness/addresses.py)
so that the product's real port numbers can be used by several nodes, tests and test
runs on one machine at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.addresses import allocate_loopback_ip


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
