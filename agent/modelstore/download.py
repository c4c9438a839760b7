"""Fetching objects into staging files, verified while the bytes stream in.

Everything here blocks (HTTP, file I/O, hashing) and runs in the sync's thread pool.
A single-part object is one GET hashed as it streams. A multipart object is cut on its
part boundaries (learnt from one HEAD ?partNumber=1) into ranges fetched in parallel
into a preallocated file, each range hashing its own parts, so no byte is read twice.
What the bytes are checked against (the store's CRC32, else the MD5 ETag) is in checksum.py.
"""

from __future__ import annotations

import http.client
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import urllib3.exceptions

from agent.modelstore.checksum import MD5, Checksum, PartHasher, file_digests, from_headers
from agent.modelstore.config import SyncOptions
from agent.modelstore.errors import S3Error, error_code, is_final, s3_error, unreachable
from agent.modelstore.etag import uniform_cuts
from agent.modelstore.inflight import InFlightLimit
from agent.modelstore.layout import start_writeback
from agent.modelstore.listing import RemoteObject
from agent.modelstore.transport import Transport

# Asks the store for the object's additional checksums (signed: S3 refuses unsigned x-amz-*).
_CHECKSUM_MODE = {"x-amz-checksum-mode": "ENABLED"}

# Dirty bytes handed to the disk while a file still streams in.
_WRITEBACK_STEP = 8 << 20
# Part sizes tried, largest share first, when a store will not say how an object was cut.
_COMMON_PART_MIB = (8, 16, 5, 64, 32, 15, 10, 100, 128, 50, 25, 256, 512, 6, 7)


class Cancelled(Exception):
    """The sync was asked to stop."""


class FetchError(Exception):
    """One object could not be fetched or verified. `final`: retrying within this sync
    cannot help; `unreachable`: the endpoint itself is down, so the whole sync stops."""

    def __init__(self, message: str, final: bool = False, unreachable: bool = False):
        super().__init__(message)
        self.final = final
        self.unreachable = unreachable


class VerifyError(Exception):
    """The bytes received do not match the object's size or ETag."""


@dataclass
class Counters:
    """Progress shared by the worker threads of one sync."""

    files_total: int = 0
    bytes_total: int = 0
    files_done: int = 0
    bytes_done: int = 0
    files_fetched: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_bytes(self, n: int) -> None:
        """Count bytes received (or taken over from a staged copy)."""
        with self._lock:
            self.bytes_done += n

    def add_file(self, fetched: bool = False) -> None:
        """Count one file finished (`fetched`: downloaded by this sync)."""
        with self._lock:
            self.files_done += 1
            self.files_fetched += fetched


@dataclass(frozen=True)
class Span:
    """One GET of an object: bytes [start, end) covering whole parts of sizes `cuts`
    (`cuts` is None when the ETag cannot be checked part by part)."""

    start: int
    end: int
    cuts: list[int] | None


_RETRYABLE = (
    S3Error,  # unless final (see _attempts)
    ConnectionError,
    TimeoutError,
    urllib3.exceptions.HTTPError,  # refused, reset, timed out, or a body cut short
    http.client.HTTPException,  # the same, seen by the socket reader underneath
    VerifyError,
)


@dataclass(frozen=True)
class ObjectPlan:
    """How a large object is fetched: `cuts`, its part sizes (None when the store will not
    tell), and `checksum`, what its bytes must hash to (None: nothing to check but sizes)."""

    cuts: list[int] | None
    checksum: Checksum | None


class Fetcher:
    """Downloads objects of one bucket for one sync."""

    def __init__(self, transport: Transport, options: SyncOptions, stop: threading.Event, counters: Counters):
        self.transport = transport
        self.options = options
        self.stop = stop
        self.counters = counters
        self.in_flight = InFlightLimit(options.concurrency)

    # ---- planning -------------------------------------------------------

    def plan(self, obj: RemoteObject) -> ObjectPlan:
        """Part sizes and checksum of a multipart object (two HEADs)."""
        head = self._attempts(obj, lambda: self._head(obj, None, _CHECKSUM_MODE))
        if head.get("etag", "").strip('"').lower() != obj.etag.raw:
            raise FetchError(f"{obj.key}: PreconditionFailed: the object changed since it was listed", final=True)
        checksum = from_headers(head, obj.etag.parts) or (None if _encrypted(head) else obj.etag.checksum())
        return ObjectPlan(self._part_cuts(obj), checksum)

    def _part_cuts(self, obj: RemoteObject) -> list[int] | None:
        """Sizes of the parts `obj` was uploaded in; None when the store will not tell."""
        etag = obj.etag
        # No If-Match here: some stores compare it with the part's ETag. The GETs carry it.
        head = self._retrying(obj, lambda: self._head(obj, "1"))
        if head is None:
            return None
        part = int(head.get("content-length") or 0)
        count = int(head.get("x-amz-mp-parts-count") or etag.parts)
        if part <= 0 or count != etag.parts:
            return None
        cuts = uniform_cuts(obj.size, part)
        if len(cuts) == etag.parts:
            return cuts
        return self._each_part(obj)

    def _each_part(self, obj: RemoteObject) -> list[int] | None:
        """Part sizes asked one by one (uploads whose parts are not uniform)."""
        cuts = []
        for n in range(1, obj.etag.parts + 1):
            head = self._retrying(obj, lambda n=n: self._head(obj, str(n)))
            if head is None or not head.get("content-length"):
                return None
            cuts.append(int(head["content-length"]))
        return cuts if sum(cuts) == obj.size else None

    def _head(self, obj: RemoteObject, part: str | None, amz: dict[str, str] | None = None) -> dict[str, str]:
        """The headers of a HEAD of `obj` (of one part with `part`)."""
        answer = self.transport.request(obj.key, {"partNumber": part} if part else None, method="HEAD",
                                        amz_headers=amz)
        answer.body.release_conn()
        if answer.status != 200:
            raise s3_error(answer.status, b"", "HeadObject")
        return answer.headers

    def _retrying(self, obj: RemoteObject, call: Any) -> Any:
        """`call()` with this module's retries; None when the store rejects part numbers."""
        try:
            return self._attempts(obj, call)
        except FetchError as e:
            if e.final and error_code(e.__cause__ or e) in ("400", "501", "InvalidArgument", "NotImplemented"):
                return None
            raise

    # ---- fetching -------------------------------------------------------

    def prepare_file(self, dest: Path, size: int) -> None:
        """Create `dest` at its full size, its blocks reserved, for ranged writes."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, size)
            if size:
                try:
                    os.posix_fallocate(fd, 0, size)
                except OSError:
                    pass  # a filesystem without fallocate still takes the writes
        finally:
            os.close(fd)

    def fetch_whole(self, obj: RemoteObject, dest: Path, plan: ObjectPlan | None = None) -> None:
        """GET `obj` in one request into a new `dest`, verified against the CRC32 the store
        sends with it, else its ETag (retried as a whole). Files are not fsynced one by
        one: the whole version is flushed once before it goes live. How many run at once
        is the caller's to limit (Transfer's workers hold slots of `in_flight`)."""
        checked = self._attempts(obj, lambda: self._get_whole(obj, dest))
        if not checked and obj.etag.multipart:  # no part sizes, no CRC32: try the usual part sizes
            self.finish_multipart(obj, dest, plan)

    def fetch_parts(self, obj: RemoteObject, dest: Path, start: int, first: int, cuts: list[int], algorithm: str,
                    on_part: Callable[[int, bytes], None]) -> list[bytes]:
        """GET the consecutive parts `first`, `first + 1`, ... (sizes `cuts`, the first at
        byte `start`) into the prepared `dest`. Each part is hashed by `algorithm` as it lands
        and handed to `on_part(index, digest)` once written; a retry resumes at the first
        part not done."""
        done: list[bytes] = []

        def landed(digest: bytes) -> None:
            done.append(digest)
            on_part(first + len(done) - 1, digest)

        def attempt() -> list[bytes]:
            offset = start + sum(cuts[: len(done)])
            rest = cuts[len(done):]
            if rest:
                self._get(obj, dest, Span(offset, offset + sum(rest), rest), False, lambda _h: (rest, algorithm),
                          landed)
            return done

        return self._attempts(obj, attempt)

    @staticmethod
    def part_spans(cuts: list[int], missing: list[int], streams: int) -> list[tuple[int, int, list[int]]]:
        """(byte offset, first part index, part sizes) of at most `streams` GETs covering
        the `missing` parts (ascending indexes), each a run of consecutive parts."""
        offsets = [0]
        for c in cuts:
            offsets.append(offsets[-1] + c)
        runs: list[list[int]] = []
        for i in missing:
            if runs and runs[-1][-1] == i - 1:
                runs[-1].append(i)
            else:
                runs.append([i])
        # Split the longest runs until every stream has one (a part is never split).
        while len(runs) < streams:
            longest = max(range(len(runs)), key=lambda k: len(runs[k]), default=None)
            if longest is None or len(runs[longest]) < 2:
                break
            run = runs.pop(longest)
            half = len(run) // 2
            runs[longest:longest] = [run[:half], run[half:]]
        return [(offsets[run[0]], run[0], [cuts[i] for i in run]) for run in runs]

    def _attempts(self, obj: RemoteObject, call: Any) -> Any:
        attempts = max(1, self.options.object_attempts)
        for attempt in range(1, attempts + 1):
            if self.stop.is_set():
                raise Cancelled()
            try:
                return call()
            except Cancelled:
                raise
            except _RETRYABLE as e:
                final = is_final(e)
                if final or attempt == attempts:
                    raise FetchError(f"{obj.key}: {_short(e)}", final=final, unreachable=unreachable(e)) from e
                time.sleep(min(2.0, 0.1 * 2 ** attempt) * (0.5 + random.random()))
            except OSError as e:
                raise FetchError(f"{obj.key}: cannot write {dest_hint(e)}: {e.strerror or e}") from e
        raise AssertionError("unreachable")

    def _get_whole(self, obj: RemoteObject, dest: Path) -> bool:
        """One GET of the whole of `obj`; True when its bytes were checked against a checksum."""
        chosen: list[Checksum] = []

        def pick(headers: dict[str, str]) -> tuple[list[int], str] | None:
            checksum = from_headers(headers, obj.etag.parts)
            if checksum is None and not obj.etag.multipart and not _encrypted(headers):
                checksum = obj.etag.checksum()
            if checksum is None or checksum.parts > 1:  # the part sizes are unknown here
                return None
            chosen.append(checksum)
            return [obj.size], checksum.algorithm

        digests = self._get(obj, dest, Span(0, obj.size, None), True, pick)
        if not chosen:
            return False
        if not chosen[0].matches(digests, [obj.size]):
            raise VerifyError(f"the bytes do not match the object's {chosen[0].describe()} {chosen[0].value}")
        return True

    def _get(self, obj: RemoteObject, dest: Path, span: Span, whole_file: bool,
             pick: Callable[[dict[str, str]], tuple[list[int] | None, str] | None],
             landed: Callable[[bytes], None] | None = None) -> list[bytes]:
        """One GET of `span`. `pick(response headers)` gives the part sizes and algorithm
        to hash by (None: no hashing); `landed(digest)` is called for each part once its
        bytes are written."""
        length = span.end - span.start
        headers = {}
        if obj.etag.raw:
            headers["If-Match"] = f'"{obj.etag.raw}"'
        if not (span.start == 0 and span.end == obj.size):
            headers["Range"] = f"bytes={span.start}-{span.end - 1}"
        if whole_file:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        else:
            fd = os.open(dest, os.O_WRONLY)
        received = kept = reported = 0
        hashing: tuple[list[int] | None, str] | None
        try:
            if length == 0:
                hashing = pick({})
                hasher = PartHasher([0], hashing[1]) if hashing else None
            else:
                asked = time.monotonic()
                resp_headers, body = self._open(obj.key, headers, _CHECKSUM_MODE if whole_file else None)
                if whole_file:
                    self.in_flight.observe(time.monotonic() - asked)
                try:
                    if int(resp_headers.get("content-length", -1)) != length:
                        raise VerifyError(f"expected {length} bytes, the store sends {resp_headers.get('content-length')}")
                    hashing = pick(resp_headers)
                    cuts = hashing[0] if hashing else None
                    hasher = PartHasher(cuts, hashing[1]) if hashing and cuts is not None else None
                    offset = written_back = span.start
                    buf = memoryview(bytearray(min(self.options.chunk_size, length)))
                    readinto = _reader(body)
                    while received < length:
                        if self.stop.is_set():
                            raise Cancelled()
                        n = readinto(buf[: min(len(buf), length - received)])
                        if not n:
                            raise VerifyError(f"received {received} of {length} bytes")
                        chunk = buf[:n]
                        if hasher is not None:
                            hasher.update(chunk)
                        _pwrite_all(fd, chunk, offset)
                        offset += n
                        received += n
                        self.counters.add_bytes(n)
                        if landed is not None and hasher is not None and len(hasher.digests) > reported:
                            for digest in hasher.digests[reported:]:
                                kept += cuts[reported]  # type: ignore[index]
                                reported += 1
                                landed(digest)
                        if offset - written_back >= _WRITEBACK_STEP:
                            start_writeback(fd, written_back, offset - written_back)
                            written_back = offset
                except BaseException:
                    body.close()  # drop the connection: its stream is in an unknown state
                    raise
                body.release_conn()
                start_writeback(fd, written_back, offset - written_back)
            digests = hasher.finish() if hasher is not None else []
            if landed is not None:
                for digest in digests[reported:]:
                    landed(digest)
            return digests
        except BaseException:
            if received > kept:
                self.counters.add_bytes(kept - received)  # those bytes will come again
            raise
        finally:
            os.close(fd)

    def _open(self, key: str, headers: dict[str, str], amz: dict[str, str] | None) -> tuple[Any, Any]:
        """Send a GET; returns (lower-case headers, streaming urllib3 body) of a 200/206."""
        answer = self.transport.request(key, headers=headers, amz_headers=amz)
        status, raw = answer.status, answer.body
        if status in (200, 206):
            return answer.headers, raw
        try:
            body = raw.read(64 << 10) if status not in (304,) else b""
        finally:
            raw.close()
        if status in (304, 412):
            raise s3_error(status, b"<Code>PreconditionFailed</Code>", "GetObject")
        raise s3_error(status, body, "GetObject")

    def finish_multipart(self, obj: RemoteObject, dest: Path, plan: ObjectPlan | None,
                         digests: list[bytes] | None = None) -> None:
        """Check a multipart object assembled from spans against its checksum.

        Without `plan` (or its cuts) the part sizes were unknown while downloading; then
        the usual part sizes are tried against the file on disk and its MD5 ETag.
        """
        checksum = plan.checksum if plan is not None else obj.etag.checksum()
        if checksum is None:
            return  # nothing but sizes to check (an encrypted object without a CRC32)
        if plan is not None and plan.cuts and digests is not None and checksum.matches(digests, plan.cuts):
            return
        # Perhaps the parts were not of the uniform size guessed from the first one (some
        # tools upload uneven parts): hash the file again with the store's exact sizes.
        if self._verify_from_disk(obj, dest, checksum):
            return
        raise FetchError(f"{obj.key}: content does not match its {checksum.describe()} {checksum.value}")

    def _verify_from_disk(self, obj: RemoteObject, dest: Path, checksum: Checksum) -> bool:
        """Re-hash the file with exact part sizes from the store, or with common sizes."""
        candidates: list[list[int]] = []
        exact = self._each_part(obj) if obj.etag.parts <= 10000 else None
        if exact:
            candidates.append(exact)
        for mib in _COMMON_PART_MIB if checksum.algorithm == MD5 else ():
            cuts = uniform_cuts(obj.size, mib << 20)
            if len(cuts) == obj.etag.parts and cuts not in candidates:
                candidates.append(cuts)
        return any(checksum.matches(file_digests(str(dest), cuts, checksum.algorithm), cuts) for cuts in candidates)


def _reader(body: Any) -> Any:
    """readinto() of a urllib3 response that fills the caller's buffer straight from the
    socket: urllib3's own read() allocates a fresh bytes object per chunk, which costs
    page faults by the gigabyte on large objects. Falls back to urllib3's readinto."""
    fp = getattr(body, "_fp", None)
    if fp is not None and hasattr(fp, "readinto") and not getattr(body, "chunked", False):
        return fp.readinto
    return body.readinto


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _encrypted(headers: dict[str, str]) -> bool:
    """True when the ETag is not an MD5 of the bytes (KMS or customer-key encryption)."""
    return (
        headers.get("x-amz-server-side-encryption") == "aws:kms"
        or bool(headers.get("x-amz-server-side-encryption-customer-algorithm"))
    )


def _short(e: BaseException) -> str:
    """A one-line description; presigned query strings (signature, key id) are cut off."""
    if isinstance(e, S3Error):
        return f"{e.code} {e.message}".strip()
    return _QUERY.sub("?...", f"{type(e).__name__}: {e}")


_QUERY = re.compile(r"\?[^\s'\"]*X-Amz-[^\s'\"]*")


def dest_hint(e: OSError) -> str:
    """The file an OSError is about, for messages."""
    return e.filename if isinstance(getattr(e, "filename", None), str) else "file"
