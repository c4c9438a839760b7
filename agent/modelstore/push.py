"""Uploading a model directory as a new version, so that no node takes it half-written.

To an S3-compatible store:
    1. put `<model>/<v>/.inference-agent-push` (the upload marker) before any file;
    2. upload every file, then list the version and check each object's size and ETag
       against the local file's MD5 (per part for multipart uploads);
    3. delete the marker: from then on the version is complete.
The sync never takes a version whose listing holds the marker, so a push killed at any
point leaves a version no node loads. Stores written by other tools have no marker and
keep working as before (a version is taken once its objects have been quiet a while).

To the local models root (s3.type none): copy into `<model>/.push-<v>-<id>/` (a dot name:
model servers only load numeric directories), verify every copy against the source's
MD5, flush, then rename to `<model>/<v>` without replacing anything.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import log as agent_log
from agent.modelstore.checksum import PartHasher
from agent.modelstore.config import StoreConfig, SyncOptions
from agent.modelstore.etag import combine_part_digests, parse_etag, uniform_cuts
from agent.modelstore.layout import flush_filesystem, fsync_dir, rename_noreplace
from agent.modelstore.listing import PUSH_MARKER, VERSION_RE
from agent.modelstore.progress import Progress, ProgressCallback

log = agent_log.get(__name__)

# Multipart above 16 MiB in 16 MiB parts, as the seed uploads: the sync fetches parts in parallel.
PART_SIZE = 16 << 20
_COPY_CHUNK = 1 << 20


class PushError(Exception):
    """The push failed; the message names what and where (never a credential)."""


@dataclass
class PushResult:
    """What one push did."""

    model: str
    version: int
    destination: str
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"model": self.model, "version": self.version, "destination": self.destination,
                "files": self.files, "bytes": self.bytes, "seconds": round(self.seconds, 3)}


@dataclass
class _Tracker:
    """Progress shared by upload threads."""

    files_total: int
    bytes_total: int
    callback: ProgressCallback | None
    files_done: int = 0
    bytes_done: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last: float = 0.0

    def add(self, nbytes: int = 0, files: int = 0, force: bool = False) -> None:
        with self._lock:
            self.bytes_done += nbytes
            self.files_done += files
            now = time.monotonic()
            if self.callback is None or (not force and now - self._last < 0.1):
                return
            self._last = now
            snapshot = Progress("uploading", self.files_done, self.files_total, self.bytes_done, self.bytes_total)
        try:
            self.callback(snapshot)
        except Exception:  # a broken progress bar must not break the push
            log.debug("model_push.progress_failed", exc_info=True)


def model_files(source: Path) -> list[tuple[str, Path, int]]:
    """(relative path, path, size) of every regular file under `source`, sorted.

    Refuses what would not load: a missing or empty directory, a directory of numeric
    version directories (the model's root instead of one version), special files."""
    if not source.is_dir():
        raise PushError(f"{source}: not a directory (give the directory of one model version)")
    out = []
    for dirpath, dirs, names in os.walk(source, followlinks=False):
        dirs.sort()
        for name in sorted(names):
            path = Path(dirpath) / name
            if not path.is_file():
                raise PushError(f"{path}: not a regular file (a socket, device or dangling link)")
            rel = path.relative_to(source).as_posix()
            out.append((rel, path, path.stat().st_size))
    if not out:
        raise PushError(f"{source}: no files to push")
    if all("/" in rel and VERSION_RE.match(rel.split("/", 1)[0]) for rel, _, _ in out):
        top = sorted({int(rel.split("/", 1)[0]) for rel, _, _ in out})
        raise PushError(f"{source}: holds version directories ({', '.join(map(str, top[:3]))}); "
                        f"push one version's directory, e.g. {source / str(top[-1])}")
    return out


def _part_size(size: int) -> int:
    """The part size boto3 uploads `size` bytes with (it grows parts past 10,000 of them)."""
    from s3transfer.utils import ChunksizeAdjuster

    return ChunksizeAdjuster().adjust_chunksize(PART_SIZE, size)


def local_etag(path: Path, size: int) -> str:
    """The ETag S3 gives `path` uploaded by `push_to_store` (MD5, or MD5 of part MD5s)."""
    multipart = size >= PART_SIZE
    cuts = uniform_cuts(size, _part_size(size)) if multipart else [size]
    hasher = PartHasher(cuts)
    with open(path, "rb") as f:
        while chunk := f.read(_COPY_CHUNK):
            hasher.update(chunk)
    digests = hasher.finish()
    return combine_part_digests(digests) if multipart else digests[0].hex()


# ---- to an S3-compatible store ------------------------------------------


async def push_to_store(store: StoreConfig, source: Path, name: str, version: int | None = None, *,
                        progress: ProgressCallback | None = None,
                        options: SyncOptions | None = None) -> PushResult:
    """Upload `source` as version `version` (default: the store's newest + 1) of `name`."""
    loop = asyncio.get_running_loop()
    options = options or SyncOptions()
    files = model_files(source)
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="modelpush") as pool:
        return await loop.run_in_executor(pool, _push_blocking, store, files, name, version, progress, options, pool)


def _push_blocking(store: StoreConfig, files: list[tuple[str, Path, int]], name: str, version: int | None,
                   progress: ProgressCallback | None, options: SyncOptions,
                   pool: ThreadPoolExecutor) -> PushResult:
    import botocore.exceptions as bexc
    from boto3.exceptions import S3UploadFailedError
    from boto3.s3.transfer import TransferConfig

    from agent.modelstore.client import client_for
    from agent.modelstore.errors import describe

    started = time.monotonic()
    client = client_for(store, options)
    prefix = store.model_prefix(name)
    where = f"s3://{store.bucket}/{prefix}"
    try:
        taken = _store_versions(client, store.bucket, prefix)
        if version is None:
            version = max(taken, default=0) + 1
        elif version in taken:
            raise PushError(f"version {version} of {name!r} already exists in {where} at {store.endpoint_url}; "
                            "push a new version (leave out --version to take the next free one)")
        vprefix = f"{prefix}{version}/"
        marker = json.dumps({"state": "uploading", "files": len(files), "started": time.time()}).encode()
        client.put_object(Bucket=store.bucket, Key=vprefix + PUSH_MARKER, Body=marker)
        tracker = _Tracker(len(files), sum(size for _, _, size in files), progress)
        config = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE, max_concurrency=4)

        def upload(item: tuple[str, Path, int]) -> None:
            rel, path, _size = item
            # With a CRC32 stored beside each object, a node verifies it at a fraction of
            # the CPU an MD5 costs (checksum.py).
            client.upload_file(str(path), store.bucket, vprefix + rel, Config=config,
                               ExtraArgs={"ChecksumAlgorithm": "CRC32"}, Callback=lambda n: tracker.add(n))
            tracker.add(files=1)

        try:
            for _ in pool.map(upload, files):
                pass
            tracker.add(force=True)
            _verify_store(client, store.bucket, vprefix, files, pool)
        except BaseException:
            _discard(client, store.bucket, vprefix, files)
            raise
        # The commit: from here on the version is complete and every node may take it.
        client.delete_object(Bucket=store.bucket, Key=vprefix + PUSH_MARKER)
    except (bexc.ClientError, bexc.BotoCoreError, S3UploadFailedError) as e:
        raise PushError(describe(e, store, f"push of {name!r} to {where} failed")) from e
    result = PushResult(name, version, f"{store.location} ({vprefix})", len(files),
                        sum(size for _, _, size in files), time.monotonic() - started)
    log.info("model_push.done", **result.to_dict())
    return result


def _discard(client: Any, bucket: str, vprefix: str, files: list[tuple[str, Path, int]]) -> None:
    """Best effort after a failed push: delete what it uploaded, the marker last (if this
    fails too, the marker stays and no node takes the version)."""
    try:
        for key in [vprefix + rel for rel, _, _ in files] + [vprefix + PUSH_MARKER]:
            client.delete_object(Bucket=bucket, Key=key)  # absent keys are no error
    except Exception:
        log.warning("model_push.cleanup_failed", prefix=vprefix, exc_info=True)


def _store_versions(client: Any, bucket: str, prefix: str) -> set[int]:
    """Version numbers present under `prefix`, complete or not."""
    found: set[int] = set()
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        for cp in page.get("CommonPrefixes", ()):
            v = cp["Prefix"][len(prefix):].rstrip("/")
            if VERSION_RE.match(v):
                found.add(int(v))
    return found


def _verify_store(client: Any, bucket: str, vprefix: str, files: list[tuple[str, Path, int]],
                  pool: ThreadPoolExecutor) -> None:
    """Every file is in the store with its size and the ETag of its bytes."""
    listed: dict[str, dict] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=vprefix):
        for item in page.get("Contents", ()):
            listed[item["Key"][len(vprefix):]] = item
    etags = list(pool.map(lambda f: local_etag(f[1], f[2]), files))
    for (rel, path, size), want in zip(files, etags):
        item = listed.get(rel)
        if item is None:
            raise PushError(f"{rel}: not in the store after its upload")
        if int(item["Size"]) != size:
            raise PushError(f"{rel}: the store holds {item['Size']} bytes, {path} has {size}")
        got = parse_etag(item.get("ETag", ""))
        if got.verifiable and got.raw != want:
            raise PushError(f"{rel}: the store's ETag {got.raw} does not match the MD5 of {path} ({want}); "
                            "the upload was corrupted")


# ---- to the local models root -------------------------------------------


async def push_to_root(models_root: Path, source: Path, name: str, version: int | None = None, *,
                       progress: ProgressCallback | None = None) -> PushResult:
    """Copy `source` into `<models_root>/<name>/<version>` atomically, verified."""
    files = model_files(source)
    return await asyncio.get_running_loop().run_in_executor(
        None, _push_root_blocking, Path(models_root), files, name, version, progress)


def _push_root_blocking(models_root: Path, files: list[tuple[str, Path, int]], name: str, version: int | None,
                        progress: ProgressCallback | None) -> PushResult:
    started = time.monotonic()
    model_dir = models_root / name
    model_dir.mkdir(parents=True, exist_ok=True)
    taken = {int(e.name) for e in os.scandir(model_dir) if VERSION_RE.match(e.name)}
    if version is None:
        version = max(taken, default=0) + 1
    elif version in taken:
        raise PushError(f"version {version} of {name!r} already exists in {model_dir}; "
                        "push a new version (leave out --version to take the next free one)")
    staging = model_dir / f".push-{version}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    tracker = _Tracker(len(files), sum(size for _, _, size in files), progress)
    try:
        for rel, path, size in files:
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            digest = _copy(path, dest, tracker)
            if os.path.getsize(dest) != size or _md5(dest) != digest:
                raise PushError(f"{dest}: the copy does not match {path}")
            tracker.add(files=1)
        tracker.add(force=True)
        flush_filesystem(staging)
        target = model_dir / str(version)
        try:
            rename_noreplace(staging, target)
        except FileExistsError:
            raise PushError(f"version {version} of {name!r} appeared in {model_dir} during the push") from None
        fsync_dir(model_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result = PushResult(name, version, str(model_dir / str(version)), len(files),
                        sum(size for _, _, size in files), time.monotonic() - started)
    log.info("model_push.done", **result.to_dict())
    return result


def _copy(src: Path, dest: Path, tracker: _Tracker) -> str:
    """Copy `src` to `dest`, returning the MD5 of the bytes read."""
    md5 = hashlib.md5()
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while chunk := fin.read(_COPY_CHUNK):
            md5.update(chunk)
            fout.write(chunk)
            tracker.add(len(chunk))
    return md5.hexdigest()


def _md5(path: Path) -> str:
    md5 = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_COPY_CHUNK):
            md5.update(chunk)
    return md5.hexdigest()
