"""The last good metadata tree, kept on disk so the agent can start and serve while the
metadata service is unreachable."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, AsyncIterator

import agent.log
from agent.metadata import Snapshot, Source

log = agent.log.get(__name__)

BOOT_TIMEOUT = 3.0


class LastGoodTree:
    """One JSON file (mode 0600: the tree holds secrets) with the last applied snapshot."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def save(self, snapshot: Snapshot) -> None:
        """Persist `snapshot` atomically; a crash leaves either the old or the new file."""
        if snapshot.tree is None:
            return
        record = {"tree": snapshot.tree, "version": snapshot.version, "source": snapshot.source,
                  "received_at": snapshot.received_at, "saved_at": time.time()}
        data = json.dumps(record, sort_keys=True).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp creates the file 0600 before a byte of the tree is written.
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def load(self) -> Snapshot | None:
        """The persisted snapshot marked stale, or None when there is none or it is unreadable."""
        try:
            record: dict[str, Any] = json.loads(self.path.read_bytes())
            tree = record["tree"]
            if not isinstance(tree, dict):
                raise ValueError("tree is not a directory")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("last good tree unreadable, ignored", path=str(self.path), error=str(e))
            return None
        return Snapshot(tree, str(record.get("version", "")), str(record.get("source", "")),
                        stale=True, received_at=float(record.get("received_at") or time.time()))


async def with_fallback(source: Source, last_good: LastGoodTree,
                        boot_timeout: float = BOOT_TIMEOUT) -> AsyncIterator[Snapshot]:
    """The source's snapshots; if it gives no tree within `boot_timeout`, the last good one
    (stale=True) first, so the node comes up on what it last ran."""
    queue: asyncio.Queue[Snapshot | BaseException] = asyncio.Queue(maxsize=1)

    async def pump() -> None:
        try:
            async for snapshot in source.snapshots():
                await queue.put(snapshot)
        except Exception as e:  # handed to the consumer, which re-raises it in its own task
            await queue.put(e)

    task = asyncio.create_task(pump(), name=f"metadata:{source.description}")
    try:
        deadline = asyncio.get_running_loop().time() + boot_timeout
        fallback_done = False
        while True:
            if fallback_done:
                item = await queue.get()
            else:
                try:
                    async with asyncio.timeout_at(deadline):
                        item = await queue.get()
                except TimeoutError:
                    fallback_done = True
                    cached = await asyncio.to_thread(last_good.load)
                    if cached is not None:
                        log.warning("metadata source silent at boot, serving the last good tree",
                                    source=source.description, version=cached.version, path=str(last_good.path))
                        yield cached
                    continue
            if isinstance(item, BaseException):
                raise item
            if item.tree is not None:
                fallback_done = True
            yield item
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
