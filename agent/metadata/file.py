"""File metadata source: a YAML or JSON file holding the `/self` tree."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import AsyncIterator

import yaml

from agent.metadata import Snapshot
from agent.state import normalize_tree

# Polling the file's identity is cheap and catches edits in place and atomic
# replaces alike (inotify would need an extra dependency for the same result).
POLL_INTERVAL = 0.2


def load_tree_file(path: Path) -> dict:
    """Read a YAML/JSON tree file; ValueError says what is wrong and where."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML/JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must hold a mapping (the /self tree), got {type(data).__name__}")
    return normalize_tree(data)


class FileSource:
    """Watches one file; yields a snapshot at start and whenever its content changes."""

    def __init__(self, path: str | os.PathLike, poll_interval: float = POLL_INTERVAL):
        self.path = Path(path).resolve()
        self.poll_interval = poll_interval
        self.description = f"file:{self.path}"

    def _identity(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self) -> Snapshot:
        try:
            raw = self.path.read_bytes()
        except OSError as e:
            return Snapshot(None, "", self.description, error=f"{self.path}: cannot read: {e.strerror or e}")
        version = hashlib.sha256(raw).hexdigest()[:16]
        try:
            tree = load_tree_file(self.path)
        except ValueError as e:
            return Snapshot(None, version, self.description, error=str(e))
        return Snapshot(tree, version, self.description)

    async def read(self) -> Snapshot:
        """The file's tree now."""
        return await asyncio.to_thread(self._read)

    async def snapshots(self) -> AsyncIterator[Snapshot]:
        """Yield the file's tree now and after every change to it."""
        identity = self._identity()
        last = await asyncio.to_thread(self._read)
        yield last
        while True:
            await asyncio.sleep(self.poll_interval)
            current = self._identity()
            if current == identity:
                continue
            identity = current
            snap = await asyncio.to_thread(self._read)
            if (snap.version, snap.error) != (last.version, last.error):
                last = snap
                yield snap
