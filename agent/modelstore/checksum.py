"""What an object's bytes must hash to, and hashing them part by part as they stream in.

Two kinds of checksum are checked:
- the object's ETag, when it is an MD5 scheme (the MD5 of the bytes, or for a multipart
  upload the MD5 of its parts' MD5s with a "-N" suffix);
- the store's additional checksum CRC32 (`x-amz-checksum-crc32`, given with
  `x-amz-checksum-mode: ENABLED`), which current S3 SDKs attach to every upload: of the
  whole object ("full object"), or a CRC32 of its parts' CRC32s ("composite", "-N").
CRC32 runs at several GB/s where MD5 runs under one, so when the store holds a CRC32 it
is the one checked: verifying a large model then costs a fraction of receiving it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import zlib
from dataclasses import dataclass
from typing import Any, Callable

MD5 = "md5"
CRC32 = "crc32"
DIGEST_SIZE = {MD5: 16, CRC32: 4}
_CRC32_POLY = 0xEDB88320  # reflected


class _Crc32:
    """hashlib's interface over zlib.crc32."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: Any) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


_NEW: dict[str, Callable[[], Any]] = {MD5: hashlib.md5, CRC32: _Crc32}


@dataclass(frozen=True)
class Checksum:
    """What an object's bytes must hash to: `value` as the store gives it (hex for MD5,
    base64 for CRC32) without its "-N" suffix; `parts` is N for a value computed over N
    parts' digests, 0 for a value of the whole object."""

    algorithm: str
    value: str
    parts: int = 0
    # A multipart object's CRC32 given with neither suffix nor type (moto's HEAD does
    # that): it may be of the whole object or of its parts, and both are tried.
    whole_too: bool = False

    def describe(self) -> str:
        """How an error message names it."""
        if self.algorithm == MD5:
            return "multipart ETag" if self.parts else "ETag"
        return f"{self.algorithm.upper()} checksum"

    def matches(self, digests: list[bytes], cuts: list[int]) -> bool:
        """True when the parts' digests (of sizes `cuts`) give this checksum."""
        if len(digests) != len(cuts) or any(len(d) != DIGEST_SIZE[self.algorithm] for d in digests):
            return False
        if self.parts:
            if len(digests) == self.parts:
                whole = _NEW[self.algorithm]()
                whole.update(b"".join(digests))
                if self._encode(whole.digest()) == self.value:
                    return True
            if not self.whole_too:
                return False
        if self.algorithm == CRC32:
            crc = int.from_bytes(digests[0], "big")
            for digest, size in zip(digests[1:], cuts[1:]):
                crc = crc32_combine(crc, int.from_bytes(digest, "big"), size)
            return self._encode(crc.to_bytes(4, "big")) == self.value
        return len(digests) == 1 and self._encode(digests[0]) == self.value

    def _encode(self, digest: bytes) -> str:
        return digest.hex() if self.algorithm == MD5 else base64.b64encode(digest).decode()


def from_headers(headers: dict[str, str], parts: int = 0) -> Checksum | None:
    """The CRC32 checksum in a response's (lower-case) headers for an object uploaded in
    `parts` parts (0: in one), or None when there is none or it is malformed (then the
    ETag is checked instead)."""
    raw = headers.get("x-amz-checksum-crc32")
    if not raw or len(raw) > 40:
        return None
    value, dash, count = raw.strip().partition("-")
    kind = headers.get("x-amz-checksum-type", "").upper()
    whole_too = False
    if dash:
        if not count.isdigit() or not 1 <= int(count) <= 10000:
            return None
        parts = int(count)
    elif kind != "COMPOSITE":
        whole_too = parts > 0 and kind != "FULL_OBJECT"
        parts = parts if whole_too else 0
    try:
        if len(base64.b64decode(value, validate=True)) != 4:
            return None
    except (binascii.Error, ValueError):
        return None
    return Checksum(CRC32, value, parts, whole_too)


class PartHasher:
    """One digest per part of one byte range, fed in arbitrary chunks; `cuts` are the sizes
    of the parts the range covers, in order (one cut of the whole size for a single-part object)."""

    def __init__(self, cuts: list[int], algorithm: str = MD5):
        self._new = _NEW[algorithm]
        self._cuts = list(cuts)
        self._i = 0
        self._left = self._cuts[0] if self._cuts else 0
        self._h = self._new()
        self.digests: list[bytes] = []

    def update(self, chunk: bytes | memoryview) -> None:
        """Feed the next bytes of the range."""
        view = memoryview(chunk)
        while len(view) >= self._left and self._i < len(self._cuts):
            self._h.update(view[: self._left])
            view = view[self._left:]
            self.digests.append(self._h.digest())
            self._h = self._new()
            self._i += 1
            self._left = self._cuts[self._i] if self._i < len(self._cuts) else 0
        if len(view):
            if self._i >= len(self._cuts):
                raise ValueError("more bytes than the parts hold")
            self._h.update(view)
            self._left -= len(view)

    def finish(self) -> list[bytes]:
        """The digests of every part in the range; fails if the range came up short."""
        while self._i < len(self._cuts) and self._left == 0:  # a trailing empty part
            self.digests.append(self._h.digest())
            self._h = self._new()
            self._i += 1
            self._left = self._cuts[self._i] if self._i < len(self._cuts) else 0
        if self._i < len(self._cuts):
            raise ValueError(f"range ended {self._left} bytes into part {self._i + 1} of {len(self._cuts)}")
        return self.digests


def file_digests(path: str, cuts: list[int], algorithm: str) -> list[bytes]:
    """The digests of a local file cut into parts of the sizes `cuts` (a fallback, when
    an object's parts turn out not to be the sizes guessed while it streamed in)."""
    hasher = PartHasher(cuts, algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return hasher.finish()


def _gf2_apply(matrix: list[int], vector: int) -> int:
    """Multiply a 32x32 matrix over GF(2) (one int per column) by a vector."""
    out, i = 0, 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_apply(matrix, column) for column in matrix]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC32 of A + B from crc32(A), crc32(B) and len(B)."""
    if len2 <= 0 or crc1 == 0:  # B is empty, or A's CRC advances to 0 (the operator is linear)
        return crc1 ^ crc2
    return _gf2_apply(_zeros_operator(len2), crc1) ^ crc2


@functools.lru_cache(maxsize=64)
def _zeros_operator(length: int) -> list[int]:
    """The matrix that advances a CRC32 over `length` zero bytes (cached: the parts of
    one upload share a size, so one matrix serves them all)."""
    return [_advance(1 << bit, length) for bit in range(32)]


def _advance(crc: int, length: int) -> int:
    """`crc` advanced over `length` zero bytes by squaring the one-zero-bit operator
    (O(log length) steps), as zlib's crc32_combine does."""
    odd = [_CRC32_POLY] + [1 << n for n in range(31)]  # one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    while True:
        even = _gf2_square(odd)  # 8, 32, 128... zero bits: one byte, then squares
        if length & 1:
            crc = _gf2_apply(even, crc)
        length >>= 1
        if not length:
            return crc
        odd = _gf2_square(even)
        if length & 1:
            crc = _gf2_apply(odd, crc)
        length >>= 1
        if not length:
            return crc
