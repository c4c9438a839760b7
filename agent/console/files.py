"""What is on disk under the console's roots: log files and the TF Serving model tree.

Only names the console would serve are listed (see `confine`), symlinks leading out of
a root are left out, and every walk is bounded in entries so a huge tree costs little.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from agent.console.confine import is_plain_name, within

MAX_ENTRIES = 5000  # per listing: bounds the memory and the page size
LOG_DEPTH = 3


@dataclass
class FileEntry:
    """One file or directory, by its path relative to its root."""

    path: str
    name: str
    is_dir: bool
    size: int
    mtime: float


@dataclass
class ModelVersionOnDisk:
    """One numbered version directory of a model."""

    version: str
    size: int
    files: int
    mtime: float


@dataclass
class ModelOnDisk:
    """One model directory: its numbered versions, newest first."""

    name: str
    versions: list[ModelVersionOnDisk] = field(default_factory=list)


def _entry(real_root: Path, rel: str, de: os.DirEntry) -> FileEntry | None:
    """The entry for `de` if the console may serve it (symlinks only within the root)."""
    try:
        if de.is_symlink():
            target = os.path.realpath(de.path)
            if not within(real_root, target):
                return None
            st = os.stat(target)
        else:
            st = de.stat(follow_symlinks=False)
    except OSError:
        return None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return None
    return FileEntry(path=rel, name=de.name, is_dir=stat.S_ISDIR(st.st_mode), size=st.st_size, mtime=st.st_mtime)


def list_dir(root: Path, directory: Path) -> list[FileEntry]:
    """Servable entries of `directory` (a resolved path under `root`), directories first."""
    real_root = Path(os.path.realpath(root))
    base = os.path.relpath(directory, real_root)
    prefix = "" if base == "." else base + "/"
    out: list[FileEntry] = []
    with os.scandir(directory) as it:
        for de in it:
            if len(out) >= MAX_ENTRIES:
                break
            if is_plain_name(de.name) and (e := _entry(real_root, prefix + de.name, de)) is not None:
                out.append(e)
    out.sort(key=lambda e: (not e.is_dir, e.name))
    return out


def list_logs(root: Path) -> list[FileEntry]:
    """Every servable log file under `root` (a few levels deep), by path."""
    real_root = Path(os.path.realpath(root))
    if not real_root.is_dir():
        return []
    found: list[FileEntry] = []
    pending = [(real_root, 0)]
    while pending and len(found) < MAX_ENTRIES:
        directory, depth = pending.pop()
        try:
            entries = list_dir(real_root, directory)
        except OSError:
            continue
        for e in entries:
            if not e.is_dir:
                found.append(e)
            elif depth + 1 < LOG_DEPTH:
                pending.append((real_root / e.path, depth + 1))
    found.sort(key=lambda e: e.path)
    return found[:MAX_ENTRIES]


def _tree_size(top: Path) -> tuple[int, int, float]:
    """Bytes, file count and newest mtime under `top` (symlinks not followed; bounded)."""
    total = files = 0
    newest = 0.0
    for dirpath, _dirs, names in os.walk(top):
        for n in names:
            if files >= 100_000:
                return total, files, newest
            try:
                st = os.lstat(os.path.join(dirpath, n))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
                files += 1
                newest = max(newest, st.st_mtime)
    return total, files, newest


def scan_models(root: Path) -> list[ModelOnDisk]:
    """The model tree `<root>/<name>/<version>/...` with the size of each version (blocking)."""
    real_root = Path(os.path.realpath(root))
    if not real_root.is_dir():
        return []
    models = []
    for entry in list_dir(real_root, real_root):
        if not entry.is_dir:
            continue
        model = ModelOnDisk(name=entry.name)
        for v in list_dir(real_root, real_root / entry.name):
            if v.is_dir and v.name.isdigit():
                size, count, newest = _tree_size(real_root / v.path)
                model.versions.append(ModelVersionOnDisk(version=v.name, size=size, files=count, mtime=max(newest, v.mtime)))
        model.versions.sort(key=lambda v: int(v.version), reverse=True)
        models.append(model)
    return models
