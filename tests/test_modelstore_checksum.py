"""What the sync checks bytes against: the store's CRC32 (whole object or composite over
parts, combined from per-part CRCs computed as ranges land) or the MD5 ETag; and the
sync path's imports stay free of boto3 (its start-up is most of a no-op CLI sync)."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from agent.modelstore.checksum import CRC32, MD5, Checksum, PartHasher, crc32_combine, from_headers

ROOT = Path(__file__).resolve().parents[1]


def _b64(crc: int) -> str:
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


def _digests(data: bytes, cuts: list[int], algorithm: str) -> list[bytes]:
    hasher = PartHasher(cuts, algorithm)
    step = 7919  # chunks that straddle part boundaries
    for i in range(0, len(data), step):
        hasher.update(data[i:i + step])
    return hasher.finish()


def test_crc32_combine_equals_the_crc32_of_the_concatenation():
    rng = random.Random(1)
    for _ in range(300):
        a, b = rng.randbytes(rng.randint(0, 5000)), rng.randbytes(rng.randint(0, 5000))
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_a_whole_object_crc32_is_checked_from_parts_hashed_in_any_cut():
    data = os.urandom(100_000)
    whole = Checksum(CRC32, _b64(zlib.crc32(data)))
    for cuts in ([100_000], [40_000, 40_000, 20_000], [1, 99_998, 1], [0, 100_000]):
        assert whole.matches(_digests(data, cuts, CRC32), cuts)
    flipped = bytearray(data)
    flipped[54_321] ^= 1
    assert not whole.matches(_digests(bytes(flipped), [50_000, 50_000], CRC32), [50_000, 50_000])


def test_a_composite_crc32_and_a_multipart_etag_need_the_true_part_sizes():
    data = os.urandom(90_000)
    cuts = [40_000, 40_000, 10_000]
    parts = [data[:40_000], data[40_000:80_000], data[80_000:]]
    composite = _b64(zlib.crc32(b"".join(zlib.crc32(p).to_bytes(4, "big") for p in parts)))
    etag = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    assert Checksum(CRC32, composite, 3).matches(_digests(data, cuts, CRC32), cuts)
    assert Checksum(MD5, etag, 3).matches(_digests(data, cuts, MD5), cuts)
    wrong = [30_000, 30_000, 30_000]
    assert not Checksum(CRC32, composite, 3).matches(_digests(data, wrong, CRC32), wrong)
    assert not Checksum(MD5, etag, 3).matches(_digests(data, wrong, MD5), wrong)


def test_checksum_headers_are_read_strictly():
    value = _b64(123456789)
    assert from_headers({"x-amz-checksum-crc32": value}) == Checksum(CRC32, value, 0)
    assert from_headers({"x-amz-checksum-crc32": f"{value}-3"}, 3) == Checksum(CRC32, value, 3)
    assert from_headers({"x-amz-checksum-crc32": value, "x-amz-checksum-type": "COMPOSITE"}, 3) == Checksum(CRC32, value, 3)
    assert from_headers({"x-amz-checksum-crc32": value, "x-amz-checksum-type": "FULL_OBJECT"}, 3) == Checksum(CRC32, value, 0)
    # A multipart object's value with neither suffix nor type (moto's HEAD): both readings are tried.
    assert from_headers({"x-amz-checksum-crc32": value}, 3) == Checksum(CRC32, value, 3, whole_too=True)
    # Hostile or broken values: the ETag is checked instead, nothing crashes.
    for bad in ("", "not base64!", "AAAA", "AAAAAAAA", f"{value}-0", f"{value}-99999", f"{value}-x", "A" * 5000):
        assert from_headers({"x-amz-checksum-crc32": bad}, 3) is None, bad
    assert from_headers({}) is None


@pytest.mark.parametrize("module", ["agent.modelstore.sync", "agent.commands.sync", "agent.modelstore.syncer",
                                    "agent.modelstore.push"])
def test_the_sync_and_push_modules_load_without_boto3(module):
    code = f"import sys, {module}; sys.exit(1 if 'boto3' in sys.modules or 'botocore' in sys.modules else 0)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{module} imports boto3 or botocore: {done.stderr[-2000:]}"
