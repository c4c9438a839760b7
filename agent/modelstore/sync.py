"""One sync of one model: make `<models>/<name>/` hold exactly the store's versions.

    list -> compare with the manifest -> stage changed versions (reusing what an
    interrupted sync verified, and unchanged files of a version being replaced)
    -> verify -> rename each version into place as soon as it is complete
    -> retire versions gone from the store (never the last loadable one).

A live version directory is never written in place: a new version appears with one
rename, a changed one is swapped with renameat2(RENAME_EXCHANGE).
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import functools
import os
import shutil
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from agent import log as agent_log
from agent.modelstore.client import StoreError, client_for, describe, scrub
from agent.modelstore.config import StoreConfig, SyncOptions
from agent.modelstore.download import Cancelled, Counters, Fetcher, FetchError, Span
from agent.modelstore.layout import ModelDir, boot_id, flush_filesystem, fsync_dir, publish, retire
from agent.modelstore.listing import RemoteModel, RemoteObject, list_model
from agent.modelstore.manifest import Files, Journal, Manifest, Parts
from agent.params import model_name_rule

log = agent_log.get(__name__)

PROGRESS_INTERVAL = 0.2
# A push whose marker is older than this is taken for abandoned: no more quick re-syncs.
PUSH_ABANDONED_SECONDS = 3600.0
# model.name's rule in config_schema.json.
MODEL_NAME = model_name_rule()


@dataclass(frozen=True)
class SyncProgress:
    """Where a running sync is: phase is listing, downloading or done."""

    phase: str
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0


ProgressCallback = Callable[[SyncProgress], None]


@dataclass
class SyncResult:
    """What one sync did. `error` is None when the local model matches the store."""

    model: str
    source: str
    versions_added: list[int] = field(default_factory=list)
    versions_replaced: list[int] = field(default_factory=list)
    versions_removed: list[int] = field(default_factory=list)
    versions_kept: list[int] = field(default_factory=list)
    versions_failed: dict[int, str] = field(default_factory=dict)
    # Versions whose objects are still changing (an upload in progress); sync again after
    # `retry_after` seconds to take them.
    versions_pending: list[int] = field(default_factory=list)
    retry_after: float | None = None
    bytes_downloaded: int = 0
    bytes_reused: int = 0
    files_downloaded: int = 0
    objects_listed: int = 0
    seconds: float = 0.0
    error: str | None = None

    @property
    def changed(self) -> bool:
        """True when live versions were added, replaced or removed."""
        return bool(self.versions_added or self.versions_replaced or self.versions_removed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        out = asdict(self)
        out["versions_failed"] = {str(k): v for k, v in self.versions_failed.items()}
        out["seconds"] = round(self.seconds, 3)
        return out


@dataclass
class _Job:
    """One version to stage and publish."""

    version: int
    objects: dict[str, RemoteObject]
    want: Files
    replace: bool
    journal: Journal | None = None
    fetch: list[RemoteObject] = field(default_factory=list)
    # Parts of large objects already in staging (rel -> part index -> MD5): resumed there.
    parts: dict[str, dict[int, bytes]] = field(default_factory=dict)
    error: str | None = None


async def sync_model(
    store: StoreConfig,
    model_name: str,
    models_root: Path,
    *,
    progress: ProgressCallback | None = None,
    options: SyncOptions | None = None,
) -> SyncResult:
    """Sync s3://bucket/prefix/<model_name>/ into <models_root>/<model_name>/ once."""
    options = options or SyncOptions()
    started = time.monotonic()
    result = SyncResult(model=model_name, source=f"{store.location} ({store.model_prefix(model_name)})")
    if not MODEL_NAME.match(model_name):  # it becomes a directory name: no '..', no '/'
        result.error = f"invalid model name {model_name!r} (letters, digits, '.', '_', '-'; not starting with '.')"
        return result
    mdir = ModelDir(Path(models_root) / model_name)
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=options.concurrency + options.multipart_streams, thread_name_prefix="modelsync")
    run = _Run(store, model_name, mdir, options, pool, result, progress)
    lock_fd = -1
    try:
        lock_fd = await loop.run_in_executor(pool, _lock, mdir, options.lock_timeout)
        await run.execute()
    except asyncio.CancelledError:
        run.stop.set()
        raise
    except StoreError as e:
        result.error = str(e)
    except Exception as e:  # a sync must report, never kill its caller's loop
        log.exception("model_sync.crashed", model=model_name)
        result.error = scrub(f"sync of {model_name} failed: {type(e).__name__}: {e}", store)
    finally:
        run.stop.set()
        run.finish_progress()
        result.seconds = time.monotonic() - started
        # Worker threads notice `stop` between chunks; the lock is released only once they
        # are gone, so nothing writes into staging behind the next sync's back.
        shutdown = loop.run_in_executor(None, functools.partial(pool.shutdown, wait=True, cancel_futures=True))
        release = functools.partial(_unlock, lock_fd)
        try:
            await asyncio.shield(shutdown)
        except asyncio.CancelledError:  # cancelled again while winding down
            shutdown.add_done_callback(release)
            raise
        release()
        result.bytes_downloaded = run.bytes_downloaded()
        result.files_downloaded = run.counters.files_fetched
    if result.error is None and run.abort_reason:
        result.error = run.abort_reason
    if result.error is None and result.versions_failed:
        result.error = "; ".join(f"version {v}: {msg}" for v, msg in sorted(result.versions_failed.items()))
    (log.warning if result.error else log.info)(
        "model_sync.done",
        model=model_name,
        source=result.source,
        added=result.versions_added,
        replaced=result.versions_replaced,
        removed=result.versions_removed,
        kept=result.versions_kept,
        bytes=result.bytes_downloaded,
        seconds=round(result.seconds, 3),
        error=result.error,
    )
    return result


def _unlock(fd: int, _done: Any = None) -> None:
    if fd >= 0:
        os.close(fd)


def _lock(mdir: ModelDir, timeout: float) -> int:
    """Hold the model's lock file, waiting up to `timeout` for another sync to finish."""
    mdir.prepare()
    fd = os.open(mdir.lock, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise StoreError(f"another sync of {mdir.root} is still running (lock {mdir.lock})") from None
            time.sleep(0.1)


class _Run:
    """The state of one sync_model call."""

    def __init__(self, store: StoreConfig, model: str, mdir: ModelDir, options: SyncOptions,
                 pool: ThreadPoolExecutor, result: SyncResult, progress: ProgressCallback | None):
        self.store = store
        self.model = model
        self.mdir = mdir
        self.options = options
        self.pool = pool
        self.result = result
        self.progress = progress
        self.stop = threading.Event()
        self.abort_reason: str | None = None
        self.boot = boot_id()
        self.counters = Counters()
        self.reused_bytes = 0
        self.fetcher: Fetcher | None = None
        self.manifest = Manifest(model)
        self._manifest_lock = asyncio.Lock()
        self._ticker: asyncio.Task | None = None
        self._phase = "listing"

    async def _in_pool(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def bytes_downloaded(self) -> int:
        return max(0, self.counters.bytes_done - self.reused_bytes)

    # ---- progress -------------------------------------------------------

    def _report(self) -> None:
        if self.progress is None:
            return
        c = self.counters
        try:
            self.progress(SyncProgress(self._phase, c.files_done, c.files_total, c.bytes_done, c.bytes_total))
        except Exception:  # a broken progress bar must not break the sync
            log.debug("model_sync.progress_failed", exc_info=True)

    async def _tick(self) -> None:
        while True:
            self._report()
            await asyncio.sleep(PROGRESS_INTERVAL)

    def finish_progress(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        self._phase = "done"
        self._report()

    # ---- the sync -------------------------------------------------------

    async def execute(self) -> None:
        store, model, result = self.store, self.model, self.result
        if self.progress is not None:
            self._ticker = asyncio.create_task(self._tick())
        client = await self._in_pool(client_for, store, self.options)
        try:
            remote = await list_model(client, store.bucket, store.model_prefix(model), self.pool,
                                      self.options.request_attempts)
        except Exception as e:
            raise StoreError(describe(e, store, f"cannot list s3://{store.bucket}/{store.model_prefix(model)}")) from e
        result.objects_listed = remote.objects_listed
        self.manifest = await self._in_pool(Manifest.load, self.mdir.manifest, model)
        self.manifest.source = result.source
        live = await self._in_pool(self.mdir.live_versions)
        jobs = await self._in_pool(self._plan, remote, live)
        if jobs:
            self._phase = "downloading"
            self.fetcher = await self._in_pool(Fetcher, client, store.bucket, self.options, self.stop, self.counters)
            await self._run_jobs(jobs)
        await self._retire(remote)
        await self._in_pool(self._cleanup_staging, remote)
        if not remote.versions and not remote.uploading:
            result.error = (
                f"no versions of model {model!r} in s3://{store.bucket}/{store.model_prefix(model)} "
                f"at {store.endpoint_url} (a version is a numeric directory)"
            )

    def _plan(self, remote: RemoteModel, live: list[int]) -> list[_Job]:
        """Sort remote versions into kept and jobs (blocking: stats and journals)."""
        jobs = []
        manifest_dirty = False
        for v in sorted(remote.versions, reverse=True):  # newest first: it is what servers load
            objects = remote.versions[v]
            want = {rel: (o.size, o.etag.raw) for rel, o in objects.items()}
            if v in live and self.manifest.versions.get(v) == want and _files_present(self.mdir.version(v), want):
                self.result.versions_kept.append(v)
                continue
            if v in live and self._adopt(v, want):
                self.result.versions_kept.append(v)
                manifest_dirty = True
                continue
            age = remote.server_time - max(o.modified for o in objects.values())
            if age < self.options.settle_seconds:
                self.result.versions_pending.append(v)
                wait = self.options.settle_seconds - max(0.0, age)
                self.result.retry_after = max(self.result.retry_after or 0.0, wait)
                continue
            jobs.append(_Job(v, objects, want, replace=v in live))
        for v, started in remote.uploading.items():
            # `models push` is still uploading it: look again soon, unless the push looks
            # abandoned (its marker then stays until an operator deletes the version).
            self.result.versions_pending.append(v)
            if remote.server_time - started < PUSH_ABANDONED_SECONDS:
                wait = max(1.0, self.options.settle_seconds)
                self.result.retry_after = max(self.result.retry_after or 0.0, wait)
        if manifest_dirty:
            self.manifest.save(self.mdir.manifest)
        for job in jobs:
            self._stage(job)
        self.result.versions_kept.sort()
        self.result.versions_pending.sort()
        return jobs

    def _adopt(self, v: int, want: Files) -> bool:
        """After a crash between going live and saving the manifest, the journal of the
        staging directory now at `<v>` proves what it holds."""
        found = Journal.read(self.mdir.journal(v), self.boot)
        if found is None:
            return False
        inode, entries = found
        try:
            live_inode = os.stat(self.mdir.version(v)).st_ino
        except OSError:
            return False
        if live_inode != inode or entries != want or not _files_present(self.mdir.version(v), want):
            return False
        self.manifest.versions[v] = want
        shutil.rmtree(self.mdir.staging(v), ignore_errors=True)
        self.mdir.journal(v).unlink(missing_ok=True)
        log.info("model_sync.adopted", model=self.model, version=v)
        return True

    def _stage(self, job: _Job) -> None:
        """Prepare the staging directory of `job`, keeping every file already verified."""
        staging, jpath = self.mdir.staging(job.version), self.mdir.journal(job.version)
        keep: Files = {}
        parts: Parts = {}
        found = Journal.read(jpath, self.boot)
        inode = _inode(staging)
        if found and inode is not None and found[0] == inode:
            for rel, entry in found[1].items():
                if job.want.get(rel) == entry and _size(staging / rel) == entry[0]:
                    keep[rel] = entry
            for rel, (etag, done) in Journal.read_parts(jpath).items():
                want = job.want.get(rel)
                if rel not in keep and want is not None and want[1] == etag and _size(staging / rel) == want[0]:
                    parts[rel] = (etag, done)
        else:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            inode = staging.stat().st_ino
        _prune(staging, set(keep) | set(parts))
        job.parts = {rel: done for rel, (_etag, done) in parts.items()}
        reused = sum(size for size, _ in keep.values())
        if job.replace:
            reused += self._link_unchanged(job, keep)
        self.reused_bytes += reused
        self.counters.add_bytes(reused)
        self.result.bytes_reused += reused
        job.journal = Journal(jpath, inode, self.boot, keep, parts)
        job.fetch = [o for rel, o in job.objects.items() if rel not in keep]
        self.counters.files_total += len(job.objects)
        self.counters.files_done += len(keep)
        self.counters.bytes_total += sum(o.size for o in job.objects.values())

    def _link_unchanged(self, job: _Job, keep: Files) -> int:
        """Hard-link files of the live version that did not change into staging (files are
        never rewritten in place, so sharing an inode is safe). Returns bytes reused."""
        old = self.manifest.versions.get(job.version) or {}
        live, staging = self.mdir.version(job.version), self.mdir.staging(job.version)
        linked = 0
        for rel, entry in job.want.items():
            if rel in keep or old.get(rel) != entry or _size(live / rel) != entry[0]:
                continue
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(live / rel, target)
            except OSError:
                continue
            keep[rel] = entry
            linked += entry[0]
        return linked

    async def _run_jobs(self, jobs: list[_Job]) -> None:
        fetcher = self.fetcher
        assert fetcher is not None
        # Multipart objects are probed first so their ranges can start before small files.
        multipart = [o for job in jobs for o in job.fetch if o.etag.multipart and o.size > 0]
        cuts: dict[str, list[int] | None] = {}
        probes = await asyncio.gather(
            *(self._in_pool(fetcher.part_cuts, o) for o in multipart), return_exceptions=True
        )
        for obj, found in zip(multipart, probes):
            if isinstance(found, BaseException):
                self._fail_object(jobs, obj, self._failure(obj, found))
            else:
                cuts[obj.key] = found
        streams = max(1, self.options.multipart_streams // max(1, len(multipart)))
        tasks = [asyncio.ensure_future(self._run_job(job, cuts, streams)) for job in jobs]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()

    def _fail_object(self, jobs: list[_Job], obj: RemoteObject, message: str) -> None:
        for job in jobs:
            if obj in job.fetch and job.error is None:
                job.error = message

    def _failure(self, obj: RemoteObject, exc: BaseException) -> str:
        """Why `obj` failed; stops the whole sync when the endpoint is unreachable.
        Re-raises cancellation that did not come from such a stop."""
        if isinstance(exc, asyncio.CancelledError):
            raise exc
        if isinstance(exc, Cancelled):
            if self.abort_reason is None:
                raise asyncio.CancelledError()
            return self.abort_reason
        if isinstance(exc, FetchError):
            self._note_unreachable(exc)
            return str(exc)
        return describe(exc, self.store, obj.key)

    async def _run_job(self, job: _Job, cuts: dict[str, list[int] | None], streams: int) -> None:
        v = job.version
        if job.error is None:
            await self._fetch_all(job, cuts, streams)
        assert job.journal is not None
        if job.error is not None:
            job.journal.close()
            self.result.versions_failed[v] = scrub(job.error, self.store)
            return
        async with self._manifest_lock:
            await self._in_pool(self._publish, job)
        (self.result.versions_replaced if job.replace else self.result.versions_added).append(v)
        self.result.versions_replaced.sort()
        self.result.versions_added.sort()

    async def _fetch_all(self, job: _Job, cuts: dict[str, list[int] | None], streams: int) -> None:
        """Fetch the job's objects: ranged ones as parallel spans, the rest by worker
        threads draining one queue (an asyncio round trip per file would cost more CPU
        than the file itself)."""
        ranged = sorted((o for o in job.fetch if o.key in cuts), key=lambda o: -o.size)
        queue = collections.deque(sorted((o for o in job.fetch if o.key not in cuts), key=lambda o: -o.size))
        failures: list[tuple[RemoteObject, BaseException]] = []

        def drain() -> None:
            while not self.stop.is_set():
                try:
                    obj = queue.popleft()
                except IndexError:
                    return
                try:
                    self._fetch_whole(job, obj)
                except BaseException as e:
                    failures.append((obj, e))
                    self._note_unreachable(e)

        workers = min(self.options.concurrency, len(queue))
        outcomes = await asyncio.gather(
            *(self._fetch_ranged(job, o, cuts[o.key], streams) for o in ranged),
            *(self._in_pool(drain) for _ in range(workers)),
            return_exceptions=True,
        )
        failures += [(o, e) for o, e in zip(ranged, outcomes) if isinstance(e, BaseException)]
        for obj, exc in failures:
            message = self._failure(obj, exc)
            job.error = job.error or message
        if queue and job.error is None:  # stopped before every object was tried
            job.error = self._failure(queue[0], Cancelled())

    def _note_unreachable(self, exc: BaseException) -> None:
        """Stop every worker at once when the endpoint itself is down (thread-safe)."""
        if isinstance(exc, FetchError) and exc.unreachable and self.abort_reason is None:
            self.abort_reason = describe(exc.__cause__ or exc, self.store, "download stopped")
            self.stop.set()

    def _fetch_whole(self, job: _Job, obj: RemoteObject) -> None:
        """Fetch one object in one GET, verify it, record it (blocking, in a worker)."""
        fetcher = self.fetcher
        assert fetcher is not None and job.journal is not None
        dest = self.mdir.staging(job.version) / obj.rel
        span = Span(0, obj.size, None if obj.etag.multipart or not obj.etag.verifiable else [obj.size])
        fetcher.fetch_span(obj, dest, span, True)
        if obj.etag.multipart:  # the store would not give part sizes: check by trying common ones
            fetcher.finish_multipart(obj, dest, None)
        job.journal.add(obj.rel, obj.size, obj.etag.raw)
        self.counters.add_file(fetched=True)

    async def _fetch_ranged(self, job: _Job, obj: RemoteObject, cuts: list[int] | None, streams: int) -> None:
        """Fetch a multipart object as spans on its part boundaries, each part hashed as it
        lands and journalled once written (so a later sync resumes at the part level),
        then verify the whole against its ETag."""
        fetcher = self.fetcher
        assert fetcher is not None and job.journal is not None
        journal = job.journal
        dest = self.mdir.staging(job.version) / obj.rel
        try:
            if cuts is None or len(cuts) < 2:
                digests = await self._in_pool(fetcher.fetch_span, obj, dest, Span(0, obj.size, cuts), True)
            else:
                resumed = {i: d for i, d in job.parts.get(obj.rel, {}).items() if i < len(cuts)}
                if resumed:
                    reused = sum(cuts[i] for i in resumed)
                    self.reused_bytes += reused
                    self.counters.add_bytes(reused)
                    self.result.bytes_reused += reused
                else:
                    await self._in_pool(fetcher.prepare_file, dest, obj.size)
                missing = [i for i in range(len(cuts)) if i not in resumed]
                found = dict(resumed)

                def landed(index: int, digest: bytes) -> None:
                    found[index] = digest
                    journal.add_part(obj.rel, obj.etag.raw, index, digest)

                await asyncio.gather(*(
                    self._in_pool(fetcher.fetch_parts, obj, dest, start, first, run, landed)
                    for start, first, run in Fetcher.part_spans(cuts, missing, streams)
                ))
                digests = [found[i] for i in range(len(cuts))]
            try:
                await self._in_pool(fetcher.finish_multipart, obj, dest, digests if cuts else None)
            except FetchError:
                # Some part is wrong, and which one cannot be told: start this file afresh.
                journal.drop_parts(obj.rel)
                dest.unlink(missing_ok=True)
                raise
        except FetchError as e:
            self._note_unreachable(e)
            raise
        journal.add(obj.rel, obj.size, obj.etag.raw)
        self.counters.add_file(fetched=True)

    def _publish(self, job: _Job) -> None:
        """Rename the staged version into place and record it (blocking)."""
        assert job.journal is not None
        v = job.version
        staging, live = self.mdir.staging(v), self.mdir.version(v)
        flush_filesystem(staging)
        graveyard = self.mdir.graveyard(v)
        displaced = publish(staging, live, graveyard)
        fsync_dir(self.mdir.root)
        self.manifest.versions[v] = job.want
        self.manifest.save(self.mdir.manifest)
        job.journal.close()
        self.mdir.journal(v).unlink(missing_ok=True)
        if displaced:
            shutil.rmtree(graveyard, ignore_errors=True)
        log.info("model_sync.version_live", model=self.model, version=v, replaced=job.replace, files=len(job.want))

    async def _retire(self, remote: RemoteModel) -> None:
        """Remove live versions the store no longer has, keeping at least one loadable."""
        live = await self._in_pool(self.mdir.live_versions)
        gone = [v for v in live if v not in remote.versions and v not in remote.uploading]
        survivors = [v for v in live if v in remote.versions]
        if not survivors and gone:
            keep = max(gone)
            gone.remove(keep)
            log.warning("model_sync.kept_last_version", model=self.model, version=keep,
                        reason="the store has no loadable version of this model")
        async with self._manifest_lock:
            for v in gone:
                await self._in_pool(retire, self.mdir.version(v), self.mdir.graveyard(v))
                self.manifest.versions.pop(v, None)
                self.result.versions_removed.append(v)
            stale = [v for v in self.manifest.versions if v not in live or v in gone]
            for v in stale:
                self.manifest.versions.pop(v, None)
            if gone or stale:
                await self._in_pool(self.manifest.save, self.mdir.manifest)

    def _cleanup_staging(self, remote: RemoteModel) -> None:
        """Delete staging leftovers of versions the store no longer has, and graveyards."""
        root = self.mdir.staging_root
        try:
            entries = list(os.scandir(root))
        except FileNotFoundError:
            return
        for e in entries:
            base = e.name.split(".", 1)[0]
            keep = base.isdigit() and int(base) in remote.versions and ".old-" not in e.name
            if keep:
                continue
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path, ignore_errors=True)
            else:
                os.unlink(e.path)


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _size(path: Path) -> int | None:
    """Size of a regular file (not following links), else None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _files_present(root: Path, want: Files) -> bool:
    """Every wanted file exists with its size (a stat each; no reading, no hashing)."""
    return all(_size(root / rel) == size for rel, (size, _etag) in want.items())


def _prune(root: Path, keep: set[str]) -> None:
    """Delete everything under `root` but the files in `keep` (relative paths)."""
    for dirpath, dirs, files in os.walk(root, topdown=False):
        for name in files:
            full = os.path.join(dirpath, name)
            if os.path.relpath(full, root).replace(os.sep, "/") not in keep:
                os.unlink(full)
        for name in dirs:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                os.unlink(full)
            elif not os.listdir(full):
                os.rmdir(full)
