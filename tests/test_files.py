"""Atomic replacement: unchanged files are not touched, a failed check changes nothing,
and a crash never leaves a partial file."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from agent.files import CheckFailed, remove_stale_staging, replace_files
from agent.render import RenderedFile


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
from agent.render import RenderedFile
async def main():
    for i in itertools.count():
        await replace_files([RenderedFile(Path({str(target)!r}), (str(i % 10) * 200_000).encode())])
asyncio.run(main())
"""
    versions = {(str(i) * 200_000).encode() for i in range(10)}
    for delay in (0.3, 0.45, 0.6, 0.75):
        proc = subprocess.Popen([sys.executable, "-c", code])
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if target.exists():
            assert target.read_bytes() in versions
        remove_stale_staging([tmp_path])
        assert [p.name for p in tmp_path.iterdir()] in (["f"], [])
