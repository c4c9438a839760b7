"""Metadata sources: each yields whole snapshots of the `/self` tree, never diffs.

A source is an async iterator of `Snapshot`s. It yields one as soon as it has the
initial tree, then one per change it sees (duplicates are harmless: the reconciler
compares trees). A source that cannot produce a tree (unreadable file, garbage YAML)
yields a Snapshot with `error` set; the reconciler rejects it and keeps the last good state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Protocol

# Where a node's metadata comes from when nothing else is said: the platform's metadata
# service (metad), as `--metadata` of `run` and of the hooks.
DEFAULT_SOURCE = "http://metadata/"


@dataclass(frozen=True)
class Snapshot:
    """The whole `/self` tree at one moment (leaves are strings), or why it could not be read."""

    tree: dict[str, Any] | None
    version: str
    source: str
    error: str | None = None
    # True when the tree is the last good one persisted on disk, served because the
    # live source is unreachable.
    stale: bool = False
    received_at: float = field(default_factory=time.time)


class Source(Protocol):
    """Where metadata comes from: a file, metad, or etcd."""

    description: str

    def snapshots(self) -> AsyncIterator[Snapshot]:
        """Yield the current tree, then a new snapshot on every change, until cancelled."""
        ...

    async def read(self) -> Snapshot:
        """One fresh read of the current tree, apart from the stream (a hook asks the
        agent to be up to date with what the platform just wrote)."""
        ...


def open_source(spec: str, **options: Any) -> Source:
    """The source a `--metadata` argument names: `http(s)://...` is metad,
    `etcd://host:port[,host:port]/prefix` is etcd, anything else is a file path."""
    if spec.startswith(("http://", "https://")):
        from agent.metadata.metad import MetadSource

        return MetadSource(spec, **options)
    if spec.startswith(("etcd://", "etcds://")):
        from agent.metadata.etcd import EtcdSource

        return EtcdSource(spec, **options)
    from agent.metadata.file import FileSource

    return FileSource(spec.removeprefix("file://"), **options)
