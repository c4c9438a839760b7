"""Atomic replacement: unchanged files are not touched, a failed check changes nothing,
and a crash never leaves a partial file."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from agent.files import CheckFailed, remove_stale_staging, replace_files
from agent.files import RenderedFile
from tests.harness.node import wait_for


async def test_only_changed_files_are_replaced(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    files = [RenderedFile(a, b"one"), RenderedFile(b, b"two", mode=0o600)]
    assert len(await replace_files(files)) == 2
    inode = a.stat().st_ino
    assert await replace_files(files) == []
    assert a.stat().st_ino == inode
    assert (b.stat().st_mode & 0o777) == 0o600
    changed = await replace_files([RenderedFile(a, b"one"), RenderedFile(b, b"three", mode=0o600)])
    assert [f.path for f in changed] == [b] and b.read_bytes() == b"three"


async def test_failed_check_leaves_destination_untouched(tmp_path):
    a = tmp_path / "a"
    await replace_files([RenderedFile(a, b"good")])

    async def refuse(staged):
        raise CheckFailed("no")

    with pytest.raises(CheckFailed):
        await replace_files([RenderedFile(a, b"bad")], check=refuse)
    assert a.read_bytes() == b"good"
    assert os.listdir(tmp_path) == ["a"]


def test_kill_during_writes_never_leaves_a_partial_file(tmp_path):
    """A writer killed -9 at random points: the file is always one complete version."""
    target = tmp_path / "f"
    code = f"""
import asyncio, itertools
from pathlib import Path
from agent.files import replace_files
from agent.files import RenderedFile
async def main():
    for i in itertools.count():
        await replace_files([RenderedFile(Path({str(target)!r}), (str(i % 10) * 200_000).encode())])
asyncio.run(main())
"""
    versions = {(str(i) * 200_000).encode() for i in range(10)}
    rng = random.Random(12)
    interrupted = 0  # kills that landed while a staged copy was being written
    for attempt in range(40):
        proc = subprocess.Popen([sys.executable, "-c", code])
        try:
            # A version is in place before the kill: the check below always has a file to read.
            wait_for(lambda: target.exists() or proc.poll() is not None, 30, 0.005, "the first write")
            assert proc.poll() is None
            try:
                proc.wait(timeout=rng.uniform(0, 0.05))  # then a kill at a random point
            except subprocess.TimeoutExpired:
                pass
        finally:
            proc.kill()
            proc.wait()
        assert target.read_bytes() in versions
        leftovers = [p.name for p in tmp_path.iterdir() if p.name != "f"]
        interrupted += bool(leftovers)
        remove_stale_staging([tmp_path])
        assert [p.name for p in tmp_path.iterdir()] == ["f"]
        target.unlink()
        if interrupted >= 3 and attempt >= 7:
            break
    assert interrupted >= 3, "no kill landed during a write: the check above tested nothing"
