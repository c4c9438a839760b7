"""Follow a growing log file the way `tail -F` does: across rotation and truncation.

A `Follower` is polled (in an executor: it does blocking reads); each poll returns the
whole new lines since the last one. It notices rotation by the path naming another inode,
drains what the old file still had, then continues at the start of the new one. Each poll
reads a bounded amount, and a reader far behind skips ahead instead of buffering.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import BinaryIO

from agent.console.tail import MAX_LINE_BYTES, Matcher, decode_line

READ_LIMIT = 256 * 1024  # per poll: bounds the memory of one follower
MAX_BACKLOG = 8 * 1024 * 1024  # further behind than this, skip to the newest data


@dataclass
class FollowBatch:
    """New lines (already filtered), where they end, and what happened to the file."""

    lines: list[str] = field(default_factory=list)
    inode: int = 0
    offset: int = 0
    notices: list[str] = field(default_factory=list)
    more: bool = False  # data is waiting: poll again without sleeping


def parse_position(value: str | None) -> tuple[int, int] | None:
    """An `inode:offset` position (an SSE event id), or None when absent or malformed."""
    if not value:
        return None
    inode, _, offset = value.partition(":")
    try:
        return int(inode), int(offset)
    except ValueError:
        return None


class Follower:
    """Reads lines appended to `path` after a starting position."""

    def __init__(self, path: str | os.PathLike, matcher: Matcher | None, start: tuple[int, int] | None) -> None:
        self.path = os.fspath(path)
        self.matcher = matcher
        self._start = start  # (inode, offset) to resume at; None = the current end
        self._file: BinaryIO | None = None
        self._ident: tuple[int, int] = (0, 0)
        self._pos = 0
        self._partial = b""  # head of the line being written (capped)
        self._partial_len = 0  # its true length, for the resume offset
        self._skip_fragment = False  # after skipping ahead, drop the cut line we land in
        self._missing = False  # the file was absent at some poll

    def close(self) -> None:
        """Release the open file."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def poll(self) -> FollowBatch:
        """Everything complete that was appended since the last poll (blocking)."""
        batch = FollowBatch()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if self._file is None:
            if st is None:
                self._missing = True
                return self._finish(batch)
            self._open(batch, at_start=self._missing)  # a file created while we watched: all new
        elif st is not None and (st.st_dev, st.st_ino) != self._ident:
            if os.fstat(self._file.fileno()).st_size > self._pos:
                # What the writer put in before it rotated, one bounded read per poll.
                self._read(batch, drain=True)
                batch.more = True
                return self._finish(batch)
            self._flush_partial(batch)
            self.close()
            self._start = None
            self._open(batch, at_start=True)
            batch.notices.append("rotated")
        elif st is not None and st.st_size < self._pos:
            self._file.seek(0)
            self._pos = 0
            self._partial, self._partial_len = b"", 0
            batch.notices.append("truncated")
        self._read(batch)
        return self._finish(batch)

    def _open(self, batch: FollowBatch, at_start: bool = False) -> None:
        try:
            self._file = open(self.path, "rb")
        except FileNotFoundError:
            return
        st = os.fstat(self._file.fileno())
        self._ident = (st.st_dev, st.st_ino)
        if at_start:
            self._pos = 0
        elif self._start is not None and self._start[0] == st.st_ino and self._start[1] <= st.st_size:
            self._pos = self._start[1]
        elif self._start is not None and self._start[0] != st.st_ino:
            self._pos = 0  # resumed after a rotation we did not see: the new file from its start
            batch.notices.append("rotated")
        else:
            self._pos = st.st_size
        self._file.seek(self._pos)

    def _read(self, batch: FollowBatch, drain: bool = False) -> None:
        if self._file is None:
            return
        size = os.fstat(self._file.fileno()).st_size
        if not drain and size - self._pos > MAX_BACKLOG:
            skipped = size - READ_LIMIT - self._pos
            self._pos = size - READ_LIMIT
            self._file.seek(self._pos)
            self._partial, self._partial_len = b"", 0
            self._skip_fragment = True
            batch.notices.append(f"skipped {skipped} bytes")
        data = self._file.read(min(READ_LIMIT, size - self._pos))
        self._pos += len(data)
        batch.more = self._pos < size
        if not data:
            return
        if self._skip_fragment:
            nl = data.find(b"\n")
            if nl < 0:
                return
            data = data[nl + 1 :]
            self._skip_fragment = False
        chunks = (self._partial + data).split(b"\n")
        last = chunks.pop()
        self._partial_len = len(last) if chunks else self._partial_len + len(data)
        self._partial = last[: MAX_LINE_BYTES + 1]
        for raw in chunks:
            self._emit(batch, raw)

    def _flush_partial(self, batch: FollowBatch) -> None:
        if self._partial:
            self._emit(batch, self._partial)
        self._partial, self._partial_len = b"", 0

    def _emit(self, batch: FollowBatch, raw: bytes) -> None:
        if self.matcher is None or self.matcher.line(raw):
            batch.lines.append(decode_line(raw))

    def _finish(self, batch: FollowBatch) -> FollowBatch:
        batch.inode = self._ident[1]
        # Resume point: after the last whole line (a partial line is re-read on resume).
        batch.offset = max(0, self._pos - self._partial_len)
        return batch
