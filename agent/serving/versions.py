"""What a model's base_path holds: its numeric version directories and a cheap
fingerprint of each, so that a version whose files change is loaded again."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class VersionDir:
    """One numeric version directory and the fingerprint of its files."""

    version: int
    path: Path
    fingerprint: tuple


def fingerprint(path: Path) -> tuple:
    """(relative path, size, mtime) of every file below `path`, sorted."""
    entries = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            entries.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(entries))


def discover(base_path: Path) -> dict[int, VersionDir]:
    """The version directories under base_path (names that are plain numbers); none if absent."""
    found: dict[int, VersionDir] = {}
    try:
        entries = list(os.scandir(base_path))
    except OSError:
        return found
    for entry in entries:
        if entry.name.isdigit() and entry.is_dir():
            path = Path(entry.path)
            found[int(entry.name)] = VersionDir(int(entry.name), path, fingerprint(path))
    return found
