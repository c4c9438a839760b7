"""A model's local directory, as TF Serving expects it, plus the sync's private files.

    <models>/<name>/<version>/...      live versions (numeric: what a model server loads)
    <models>/<name>/.staging/<v>/      a version being downloaded (same filesystem)
    <models>/<name>/.staging/<v>.journal   files of that staging dir already verified
    <models>/<name>/.manifest.json     key, size and ETag of every live file (0600)
    <models>/<name>/.lock              held while a sync runs
    <models>/<name>/.push-<v>-<id>/    a version `models push` is copying in (s3.type none)

Everything the sync owns starts with a dot, so a server scanning numeric names never sees it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from agent.modelstore.listing import VERSION_RE

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


@dataclass(frozen=True)
class ModelDir:
    """Paths of one model under the models root."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / ".manifest.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def staging_root(self) -> Path:
        return self.root / ".staging"

    def version(self, v: int) -> Path:
        """The live directory of version `v`."""
        return self.root / str(v)

    def staging(self, v: int) -> Path:
        """Where version `v` is assembled before it goes live."""
        return self.staging_root / str(v)

    def journal(self, v: int) -> Path:
        """The record of files verified in `staging(v)`."""
        return self.staging_root / f"{v}.journal"

    def graveyard(self, v: int) -> Path:
        """A unique place to move a version to before deleting it."""
        return self.staging_root / f"{v}.old-{uuid.uuid4().hex[:8]}"

    def live_versions(self) -> list[int]:
        """Version directories present now, ascending."""
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        return sorted(int(e.name) for e in entries if VERSION_RE.match(e.name) and e.is_dir(follow_symlinks=False))

    def prepare(self) -> None:
        """Create the model and staging directories."""
        self.staging_root.mkdir(parents=True, exist_ok=True)


def exchange(a: Path, b: Path) -> None:
    """Swap two directories atomically (renameat2 RENAME_EXCHANGE): a reader of either
    path sees the old tree or the new one, never neither and never a mix."""
    res = _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if res != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"renameat2 exchange failed: {os.strerror(err)}", str(a), None, str(b))


def publish(staged: Path, live: Path, graveyard: Path) -> bool:
    """Put `staged` at `live` atomically; an existing `live` ends up at `graveyard`.

    Returns True when an older tree was displaced (the caller deletes `graveyard`).
    """
    try:
        os.rename(staged, live)  # fails when `live` exists and is a non-empty directory
        return False
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
    try:
        exchange(staged, live)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
        # A filesystem without RENAME_EXCHANGE: the version is briefly absent, never partial.
        os.rename(live, graveyard)
        os.rename(staged, live)
        return True
    os.rename(staged, graveyard)
    return True


def retire(live: Path, graveyard: Path) -> None:
    """Remove a live version: it disappears at once (one rename), then is deleted."""
    os.rename(live, graveyard)
    shutil.rmtree(graveyard, ignore_errors=True)


def fsync_dir(d: Path) -> None:
    """Make the entries of a directory (renames into it) durable. (agent.files has the
    same; importing it loads the template engine, a tenth of a second of `sync`'s start.)"""
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def flush_filesystem(path: Path) -> None:
    """Write every dirty page of the filesystem holding `path` to disk (syncfs), so a
    version is durable before it goes live: one call instead of an fsync per file."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs failed: {os.strerror(err)}", str(path))
    finally:
        os.close(fd)


_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing a byte range to disk now, without waiting (sync_file_range): the
    flush before a version goes live then finds little left to write."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


def boot_id() -> str:
    """This boot's id: a journal written before a reboot cannot vouch for page-cache data."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


_RENAME_NOREPLACE = 1


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`, failing with FileExistsError when `dst` exists (even as an
    empty directory, which a plain rename would silently replace)."""
    res = _libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
    if res == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err), str(dst))
    if err not in (errno.EINVAL, errno.ENOSYS):
        raise OSError(err, f"renameat2 failed: {os.strerror(err)}", str(src), None, str(dst))
    # A filesystem without RENAME_NOREPLACE: check, then rename (a narrow race, no partial tree).
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)
