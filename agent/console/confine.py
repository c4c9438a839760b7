"""Confine a user-supplied relative path to a root directory.

The console serves only names it could have listed itself: each path segment must be a
plain file name (a whitelist of characters, no leading dot), so `..`, absolute paths,
backslashes, NUL bytes, percent-encoded leftovers and overlong UTF-8 never get as far as
the filesystem. A symlink is followed only when its target stays under the root.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# What log files and TF Serving model trees are actually named like. A leading dot is
# refused: it rules out `.`/`..` and hides staging directories of the model sync.
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,+=@~-]{0,254}")
MAX_PATH_CHARS = 1024
MAX_DEPTH = 16


class PathRefused(Exception):
    """The path is not acceptable under its root (shown to the user as 403, without detail)."""


def is_plain_name(name: str) -> bool:
    """True when `name` is one segment the console will serve."""
    return _SEGMENT.fullmatch(name) is not None


def split_relative(rel: str) -> list[str]:
    """The segments of `rel`, or PathRefused if any of them is not a plain name."""
    if len(rel) > MAX_PATH_CHARS:
        raise PathRefused("path too long")
    parts = rel.split("/")
    if len(parts) > MAX_DEPTH or not all(is_plain_name(p) for p in parts):
        raise PathRefused("path segment not allowed")
    return parts


def within(root: Path, candidate: str) -> bool:
    """True when the already-resolved `candidate` is `root` itself or below it."""
    root_s = str(root)
    return candidate == root_s or candidate.startswith(root_s.rstrip(os.sep) + os.sep)


def resolve_under(root: Path, rel: str) -> Path:
    """The real path of `root/rel`, following symlinks only inside `root`.

    Raises PathRefused for a bad name or a symlink leading out, FileNotFoundError when
    nothing is there. An empty `rel` means the root itself.
    """
    real_root = Path(os.path.realpath(root))
    if rel == "":
        return real_root
    parts = split_relative(rel)
    real = os.path.realpath(os.path.join(real_root, *parts))
    if not within(real_root, real):
        raise PathRefused("path leads out of its root")
    if not os.path.lexists(real):
        raise FileNotFoundError(rel)
    return Path(real)
