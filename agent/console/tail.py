"""The last N lines of a file, optionally filtered, read backwards from its end.

Multi-gigabyte logs cost a few block reads: the file is read from the end in blocks until
N (matching) lines are found, the scan budget is spent, or the start is reached. Memory
is bounded by the answer's byte cap plus one block, whatever the file looks like.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import re2

BLOCK = 64 * 1024
MAX_LINES = 10_000
DEFAULT_LINES = 500
# Longer lines are cut (and marked): one huge line must not cost unbounded memory.
MAX_LINE_BYTES = 4096
# How far back a filtered tail may search before it stops and says so.
MAX_SCAN_BYTES = 256 * 1024 * 1024
# How many bytes of lines one answer may hold, whatever N and the line lengths.
MAX_RESULT_BYTES = 4 * 1024 * 1024
MAX_PATTERN_CHARS = 256
TRUNCATED_MARK = " …[line cut]"

# Filters come from the network: RE2 matches in linear time (Python's `re` can backtrack
# for hours on one line), and its memory is capped.
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_RE2_OPTIONS.never_capture = True
_RE2_OPTIONS.max_mem = 8 << 20


@dataclass(frozen=True)
class Matcher:
    """A line filter. `block` is a cheap pre-check on many lines at once (never a false "no")."""

    line: Callable[[bytes], bool]
    block: Callable[[bytes], bool]


class BadFilter(ValueError):
    """The filter could not be compiled (the message says why)."""


def make_matcher(query: str, regex: bool) -> Matcher | None:
    """A line predicate for a substring or regular-expression filter; None for no filter."""
    if not query:
        return None
    if len(query) > MAX_PATTERN_CHARS:
        raise BadFilter(f"filter longer than {MAX_PATTERN_CHARS} characters")
    # A line never holds a line break: such a filter matches no line, yet its block
    # pre-check matches across lines, so it would scan the whole file line by line.
    if "\n" in query or "\r" in query or (regex and ("\\n" in query or "\\r" in query)):
        raise BadFilter("filter cannot contain a line break (lines are matched one at a time)")
    if not regex:
        needle = query.encode()
        contains = lambda data: needle in data  # noqa: E731
        return Matcher(line=contains, block=contains)
    try:
        pattern = re2.compile(query.encode(), options=_RE2_OPTIONS)
        # The same expression over many lines at once: with (?m), ^ and $ match at line
        # ends as they do on one line, so a block without a match holds no matching line.
        anchored_to_text = "\\A" in query or "\\z" in query
        block = None if anchored_to_text else re2.compile(b"(?m)" + query.encode(), options=_RE2_OPTIONS)
    except re2.error as e:
        message = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise BadFilter(f"invalid regular expression (RE2 syntax: no back-references or lookaround): {message}") from None
    return Matcher(
        line=lambda line: pattern.search(line) is not None,
        block=(lambda data: block.search(data) is not None) if block else (lambda _data: True),
    )


def clamp_lines(n: int | str | None) -> int:
    """A requested line count, bounded to 1..MAX_LINES (DEFAULT_LINES when absent or bad)."""
    try:
        value = int(n) if n not in (None, "") else DEFAULT_LINES
    except (TypeError, ValueError):
        value = DEFAULT_LINES
    return max(1, min(MAX_LINES, value))


def decode_line(raw: bytes, cut: bool = False) -> str:
    """A displayable line: UTF-8 with replacement, no trailing CR, marked when cut."""
    if len(raw) > MAX_LINE_BYTES:
        raw, cut = raw[:MAX_LINE_BYTES], True
    text = raw.rstrip(b"\r").decode("utf-8", "replace")
    return text + TRUNCATED_MARK if cut else text


@dataclass
class TailResult:
    """Lines oldest first; `end` is the file size they run up to (where following starts)."""

    lines: list[str]
    end: int
    inode: int  # of the file read: with `end`, the position a follower resumes at
    scanned: int
    scan_limited: bool  # the scan budget ran out before `n` lines or the file's start
    size_limited: bool = False  # fewer than `n` lines: they would have exceeded MAX_RESULT_BYTES


def tail_file(
    path: str | os.PathLike, n: int, matcher: Matcher | None = None, scan_limit: int = MAX_SCAN_BYTES, max_bytes: int = MAX_RESULT_BYTES
) -> TailResult:
    """The last `n` lines of `path` accepted by `matcher` (blocking: run it in an executor)."""
    n = clamp_lines(n)
    found: list[str] = []  # newest first
    kept = 0  # bytes of lines in `found`
    size_limited = False
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        end = st.st_size
        pos = end
        if pos > 0:
            f.seek(pos - 1)
            if f.read(1) == b"\n":
                pos -= 1  # the newline that closes the last line opens no new one
        carry = b""  # the head of the line that starts before `pos`
        scanned = 0
        while pos > 0 and len(found) < n and scanned < scan_limit and not size_limited:
            start = max(0, pos - BLOCK)
            f.seek(start)
            data = f.read(pos - start) + carry
            scanned += pos - start
            pos = start
            first_nl = data.find(b"\n")
            if first_nl < 0:
                # Keep only the head of an overlong line: that is what a reader recognises.
                carry = data[: MAX_LINE_BYTES + 1]
                continue
            carry = data[:first_nl][: MAX_LINE_BYTES + 1]
            if matcher is not None and not matcher.block(data[first_nl + 1 :]):
                continue
            for raw in reversed(data[first_nl + 1 :].split(b"\n")):
                if matcher is None or matcher.line(raw):
                    kept += min(len(raw), MAX_LINE_BYTES)
                    if kept > max_bytes:
                        size_limited = True
                        break
                    found.append(decode_line(raw))
                    if len(found) >= n:
                        break
        if pos == 0 and not size_limited and len(found) < n and end > 0 and (matcher is None or matcher.line(carry)):
            found.append(decode_line(carry))
    found.reverse()
    return TailResult(
        lines=found, end=end, inode=st.st_ino, scanned=scanned, scan_limited=pos > 0 and len(found) < n and not size_limited, size_limited=size_limited
    )
