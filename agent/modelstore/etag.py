"""S3 ETags: what they promise about an object's bytes, and checking bytes against them.

A single-part upload's ETag is the MD5 of the object. A multipart upload's ETag is
`md5(md5(part 1) + ... + md5(part N))-N`, so checking it needs each part's MD5, which
is why downloads hash per part while the bytes stream in.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from agent.modelstore.checksum import MD5, Checksum

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

    def checksum(self) -> Checksum | None:
        """The ETag as a checksum of the bytes (None when it is not an MD5 scheme)."""
        return Checksum(MD5, self.digest, self.parts) if self.digest is not None else None


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


def uniform_cuts(size: int, part_size: int) -> list[int]:
    """Part sizes of an object uploaded in parts of `part_size` (the last one short)."""
    if size == 0:
        return [0]
    full, rest = divmod(size, part_size)
    return [part_size] * full + ([rest] if rest else [])
