"""Helpers to follow a metadata source as the agent does: in a task of this process
(`Follower`), or in a child process whose CPU use can be measured (`SourceProcess`)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import psutil
import pytest

from agent.metadata import Snapshot


class Follower:
    """Consumes a source in a task, as the agent does, keeping every snapshot."""

    def __init__(self, source):
        self.source = source
        self.snapshots: list[tuple[float, Snapshot]] = []
        self._new = asyncio.Event()
        self.task = asyncio.create_task(self._consume())

    async def _consume(self) -> None:
        async for snapshot in self.source.snapshots():
            self.snapshots.append((time.monotonic(), snapshot))
            self._new.set()

    async def until(self, predicate, timeout: float = 5.0) -> tuple[float, Snapshot]:
        """The first snapshot (arrival time, snapshot) whose tree satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for arrived, snap in self.snapshots[seen:]:
                if snap.tree is not None and predicate(snap.tree):
                    return arrived, snap
            seen = len(self.snapshots)
            self._new.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                last = self.snapshots[-1][1].tree if self.snapshots else None
                raise AssertionError(f"no matching snapshot within {timeout}s; last tree: {last}")
            try:
                await asyncio.wait_for(self._new.wait(), remaining)
            except TimeoutError:
                pass

    async def close(self) -> None:
        """Stop following (cancels the task, as the agent does on shutdown)."""
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


_CHILD = """
import asyncio, json, sys, time
import agent.log
from agent.metadata import open_source

agent.log.setup("warning", json=True)  # logs to stderr; stdout carries the snapshots

async def report_outage(source):
    # One line when the source first reports an outage, then no more polling: the
    # parent measures this process's CPU during the outage.
    while True:
        while source.stale_since is None:
            await asyncio.sleep(0.05)
        print(json.dumps({"stale_since": source.stale_since}), flush=True)
        while source.stale_since is not None:
            await asyncio.sleep(1.0)

async def main():
    source = open_source(sys.argv[1])
    watcher = asyncio.create_task(report_outage(source))
    try:
        async for snap in source.snapshots():
            print(json.dumps({"t": time.time(), "version": snap.version, "tree": snap.tree}), flush=True)
    finally:
        watcher.cancel()

asyncio.run(main())
"""


class SourceProcess:
    """A child process following `spec`, printing one JSON line per snapshot."""

    def __init__(self, spec: str):
        self.proc = subprocess.Popen([sys.executable, "-c", _CHILD, spec], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.ps = psutil.Process(self.proc.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far."""
        t = self.ps.cpu_times()
        return t.user + t.system

    async def _next_line(self, timeout: float) -> dict:
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout)
        if not line:
            raise AssertionError("the source process exited")
        return json.loads(line)

    async def next_tree(self, timeout: float = 10.0) -> dict:
        """The next snapshot's tree the child printed (outage notices are skipped)."""
        while "tree" not in (record := await self._next_line(timeout)):
            pass
        return record["tree"]

    async def outage_noticed(self, timeout: float = 10.0) -> None:
        """Wait until the child's source reports the outage (its `stale_since` is set)."""
        while "stale_since" not in await self._next_line(timeout):
            pass

    def stop(self) -> None:
        """Kill the child and reap it."""
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture
async def follow():
    """`follow(source)` starts a Follower; all are closed at the end of the test."""
    followers: list[Follower] = []

    def start(source) -> Follower:
        f = Follower(source)
        followers.append(f)
        return f

    yield start
    for f in followers:
        await f.close()
