"""What a model's base_path holds: its numeric version directories and a cheap
fingerprint of each, so that a version whose files change is loaded again."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import agent.log

log = agent.log.get(__name__)

# TF Serving's version numbers are int64: a version directory is a decimal number (ASCII
# digits) up to 2**63 - 1. Leading zeros are allowed, as TF Serving parses them: its own
# demo models are `00000123`. The model store's sync and the server share this rule, so a
# version the sync installs is one the server can serve.
MAX_VERSION = (1 << 63) - 1
_DIGITS = re.compile(r"[0-9]{1,255}")


def parse_version(name: str) -> int | None:
    """The version a directory name stands for, or None when the rule refuses it."""
    if not _DIGITS.fullmatch(name):
        return None
    value = int(name)
    return value if value <= MAX_VERSION else None


class VersionRule:
    """The rule with a regex-like `match`, for code that filters names."""

    def match(self, name: str) -> bool:
        """True when `name` is a valid version directory name."""
        return parse_version(name) is not None


VERSION_RULE = VersionRule()
_reported: set[str] = set()


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


# A version directory written in place (a hand copy) is loaded once nothing in it has
# changed for this long.
QUIET_SECONDS = 2.0
# The last complete state of every version directory present, by path.
_complete_seen: dict[str, VersionDir] = {}


def complete(path: Path, now: float | None = None) -> bool:
    """True when the version directory is not being written: it was renamed into place
    after its last file was written (as the sync and `models push` do: every entry's
    ctime is older than the directory's), or nothing in it changed for QUIET_SECONDS.
    ctime, not mtime: `cp -a` sets old mtimes while it writes, but cannot set ctimes."""
    try:
        top = os.stat(path).st_ctime_ns
    except OSError:
        return False
    newest = 0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_ctime_ns)
            except OSError:
                return False  # vanished while we looked: still changing
    if newest and newest < top:
        return True
    now_ns = int((time.time() if now is None else now) * 1e9)
    return now_ns - max(newest, top) >= QUIET_SECONDS * 1e9


def _shadowed(name: str, version: int, entries: list[os.DirEntry]) -> bool:
    """True when another directory names the same version (`1` and `001`) and wins: the
    canonical spelling first, then the shortest name, so the choice never flaps."""
    def rank(n: str) -> tuple:
        return (n != str(version), len(n), n)

    rivals = [e.name for e in entries if e.name != name and e.is_dir() and parse_version(e.name) == version]
    return any(rank(r) < rank(name) for r in rivals)


def discover(base_path: Path) -> dict[int, VersionDir]:
    """The version directories under base_path (names that are plain numbers); none if absent."""
    found: dict[int, VersionDir] = {}
    try:
        entries = list(os.scandir(base_path))
    except OSError:
        return found
    for entry in entries:
        if not entry.is_dir():
            continue
        version = parse_version(entry.name)
        if version is None or _shadowed(entry.name, version, entries):
            # Said once per path, not at every scan.
            if entry.name[:1].isdigit() and entry.path not in _reported:
                _reported.add(entry.path)
                reason = (f"not a version number from 0 to {MAX_VERSION}" if version is None
                          else f"another directory also names version {version}")
                log.warning("version directory ignored", path=entry.path, reason=reason)
            continue
        path = Path(entry.path)
        if not complete(path):
            # Still being written: a later scan takes it. A directory rewritten in
            # place keeps its last complete state meanwhile: what is loaded stays.
            if entry.path in _complete_seen:
                found[version] = _complete_seen[entry.path]
            continue
        found[version] = _complete_seen[entry.path] = VersionDir(version, path, fingerprint(path))
    present = {entry.path for entry in entries}
    for gone in [p for p in _complete_seen if os.path.dirname(p) == os.fspath(base_path) and p not in present]:
        del _complete_seen[gone]  # removed: a directory copied in again later is new
    return found
