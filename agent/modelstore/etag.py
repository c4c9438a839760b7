"""S3 ETags: what they promise about an object's bytes, and checking bytes against them.

A single-part upload's ETag is the MD5 of the object. A multipart upload's ETag is
`md5(md5(part 1) + ... + md5(part N))-N`, so checking it needs each part's MD5, which
is why downloads hash per part while the bytes stream in.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_SINGLE = re.compile(r"^[0-9a-f]{32}$")
_MULTI = re.compile(r"^([0-9a-f]{32})-([1-9][0-9]{0,4})$")
EMPTY_MD5 = hashlib.md5(b"").hexdigest()


@dataclass(frozen=True)
class ETag:
    """A parsed ETag: `digest` is None when the ETag is not an MD5 scheme (e.g. SSE-KMS)."""

    raw: str
    digest: str | None
    parts: int  # 0 for a single-part object

    @property
    def multipart(self) -> bool:
        """True for an ETag of the part-wise scheme."""
        return self.parts > 0

    @property
    def verifiable(self) -> bool:
        """True when the bytes can be checked against this ETag."""
        return self.digest is not None


def parse_etag(value: str) -> ETag:
    """Parse an ETag as S3 lists it (quotes optional, any case)."""
    raw = value.strip().strip('"').lower()
    if _SINGLE.match(raw):
        return ETag(raw, raw, 0)
    m = _MULTI.match(raw)
    if m:
        return ETag(raw, m.group(1), int(m.group(2)))
    return ETag(raw, None, 0)


def combine_part_digests(digests: list[bytes]) -> str:
    """The multipart ETag made of the parts' binary MD5 digests."""
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


class PartHasher:
    """MD5 per part of one byte range, fed in arbitrary chunks; `cuts` are the sizes
    of the parts the range covers, in order (one cut of the whole size for a single-part object)."""

    def __init__(self, cuts: list[int]):
        self._cuts = list(cuts)
        self._i = 0
        self._left = self._cuts[0] if self._cuts else 0
        self._md5 = hashlib.md5()
        self.digests: list[bytes] = []

    def update(self, chunk: bytes | memoryview) -> None:
        """Feed the next bytes of the range."""
        view = memoryview(chunk)
        while len(view) >= self._left and self._i < len(self._cuts):
            self._md5.update(view[: self._left])
            view = view[self._left:]
            self.digests.append(self._md5.digest())
            self._md5 = hashlib.md5()
            self._i += 1
            self._left = self._cuts[self._i] if self._i < len(self._cuts) else 0
        if len(view):
            if self._i >= len(self._cuts):
                raise ValueError("more bytes than the parts hold")
            self._md5.update(view)
            self._left -= len(view)

    def finish(self) -> list[bytes]:
        """The digests of every part in the range; fails if the range came up short."""
        while self._i < len(self._cuts) and self._left == 0:  # a trailing empty part
            self.digests.append(self._md5.digest())
            self._md5 = hashlib.md5()
            self._i += 1
            self._left = self._cuts[self._i] if self._i < len(self._cuts) else 0
        if self._i < len(self._cuts):
            raise ValueError(f"range ended {self._left} bytes into part {self._i + 1} of {len(self._cuts)}")
        return self.digests


def uniform_cuts(size: int, part_size: int) -> list[int]:
    """Part sizes of an object uploaded in parts of `part_size` (the last one short)."""
    if size == 0:
        return [0]
    full, rest = divmod(size, part_size)
    return [part_size] * full + ([rest] if rest else [])


def md5_file_parts(path: str, cuts: list[int]) -> list[bytes]:
    """MD5 digests of a local file cut into parts of the sizes `cuts`.

    Used only as a fallback, when an object's parts turn out not to be uniform.
    """
    hasher = PartHasher(cuts)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return hasher.finish()
