"""Atomic file replacement, confd-style: stage in the destination directory, fsync,
compare, check, rename into place. A crash at any point leaves either the old file
or the new one, never a partial file."""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Awaitable, Callable, Iterable


STAGING_PREFIX = ".staged-"


class Check(str, Enum):
    """How a staged file is checked before it replaces the live one."""

    NONE = "none"
    ENVOY_BOOTSTRAP = "envoy-bootstrap"  # envoy --mode validate on the file itself
    ENVOY_DYNAMIC = "envoy-dynamic"  # validated inside a throwaway bootstrap


@dataclass(frozen=True)
class RenderedFile:
    """One file as it should be on disk."""

    path: Path
    content: bytes
    mode: int = 0o644
    check: Check = Check.NONE
    # The version_info Envoy reports once it runs this file (listeners and clusters).
    version: str | None = None


@dataclass(frozen=True)
class Staged:
    """A rendered file written beside its destination, not yet in place."""

    file: RenderedFile
    staged_path: Path


class CheckFailed(Exception):
    """A staged file failed its check; the live file was left untouched."""


def is_current(f: RenderedFile) -> bool:
    """True when the file on disk already has this content and mode."""
    try:
        st = f.path.stat()
        if (st.st_mode & 0o777) != f.mode or st.st_size != len(f.content):
            return False
        return f.path.read_bytes() == f.content
    except FileNotFoundError:
        return False


def stage(f: RenderedFile) -> Staged:
    """Write `f` to a temporary file in its destination directory, fsynced, with its mode."""
    f.path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{STAGING_PREFIX}{f.path.name}.", dir=f.path.parent)
    try:
        # mkstemp creates 0600: secrets are never readable by others, even while staged.
        with os.fdopen(fd, "wb") as out:
            out.write(f.content)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, f.mode)
    except BaseException:
        os.unlink(tmp)
        raise
    return Staged(f, Path(tmp))


def fsync_dir(d: Path) -> None:
    """Make the entries of a directory (renames into it) durable."""
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(staged: Iterable[Staged]) -> None:
    """Rename staged files over their destinations, in order, and make the renames durable."""
    dirs = set()
    for s in staged:
        os.replace(s.staged_path, s.file.path)
        dirs.add(s.file.path.parent)
    for d in dirs:
        fsync_dir(d)


def discard(staged: Iterable[Staged]) -> None:
    """Remove staged files that will not be committed."""
    for s in staged:
        s.staged_path.unlink(missing_ok=True)


async def replace_files(
    files: list[RenderedFile],
    check: Callable[[list[Staged]], Awaitable[None]] | None = None,
) -> list[RenderedFile]:
    """Replace every file whose content or mode differs, all or nothing: stage the
    changed ones, run `check` on them (CheckFailed aborts with nothing replaced),
    then rename them into place in list order. Returns the files replaced."""
    changed = await asyncio.to_thread(lambda: [f for f in files if not is_current(f)])
    if not changed:
        return []
    staged = await asyncio.to_thread(lambda: [stage(f) for f in changed])
    try:
        if check is not None:
            await check(staged)
    except BaseException:
        discard(staged)
        raise
    await asyncio.to_thread(commit, staged)
    return changed


def remove_stale_staging(dirs: Iterable[Path]) -> int:
    """Delete staging files left by a crash; returns how many."""
    count = 0
    for d in dirs:
        if d.is_dir():
            for p in d.glob(f"{STAGING_PREFIX}*"):
                p.unlink(missing_ok=True)
                count += 1
    return count
