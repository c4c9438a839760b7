"""One sync of one model: make `<models>/<name>/` hold exactly the store's versions.

    list (listing.py) -> compare with the manifest and stage changed versions, reusing
    what an interrupted sync verified (staging.py) -> fetch and verify (transfer.py,
    download.py) -> rename each version into place as soon as it is complete, and
    retire versions gone from the store, never the last loadable one (live.py).

This module owns the run: the lock, the thread pool, progress and the result.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent import log as agent_log
from agent.modelstore.config import StoreConfig, SyncOptions
from agent.modelstore.download import Counters, Fetcher
from agent.modelstore.errors import StoreError, describe, scrub
from agent.modelstore.layout import ModelDir, boot_id
from agent.modelstore.listing import RemoteModel, list_model
from agent.modelstore.live import publish_version, retire_gone
from agent.modelstore.manifest import Manifest
from agent.modelstore.progress import Progress, ProgressCallback
from agent.modelstore.staging import Job, cleanup_staging, files_present, plan_versions
from agent.modelstore.transfer import Transfer
from agent.modelstore.transport import Transport, transport_for
from agent.modelspec import valid_model_name

log = agent_log.get(__name__)

PROGRESS_INTERVAL = 0.2


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
    if not valid_model_name(model_name):  # it becomes a directory name: no '..', no '/'
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
        result.bytes_reused += run.transfer.reused if run.transfer is not None else 0
        result.bytes_downloaded = max(0, run.counters.bytes_done - result.bytes_reused)
        result.files_downloaded = run.counters.files_fetched
    if result.error is None and run.abort_reason():
        result.error = run.abort_reason()
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
        self.counters = Counters()
        self.transfer: Transfer | None = None
        self.manifest = Manifest(model)
        self._manifest_lock = asyncio.Lock()
        self._ticker: asyncio.Task | None = None
        self._phase = "listing"

    async def _in_pool(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def abort_reason(self) -> str | None:
        """Why the downloads stopped early (the endpoint went down), if they did."""
        return self.transfer.abort_reason if self.transfer is not None else None

    # ---- progress -------------------------------------------------------

    def _report(self) -> None:
        if self.progress is None:
            return
        c = self.counters
        try:
            self.progress(Progress(self._phase, c.files_done, c.files_total, c.bytes_done, c.bytes_total))
        except Exception:  # a broken progress bar must not break the sync
            log.debug("model_sync.progress_failed", exc_info=True)

    async def _tick(self) -> None:
        while True:
            self._report()
            await asyncio.sleep(PROGRESS_INTERVAL)

    def finish_progress(self) -> None:
        """Stop the progress ticker and report the last state."""
        if self._ticker is not None:
            self._ticker.cancel()
        self._phase = "done"
        self._report()

    # ---- the sync -------------------------------------------------------

    async def execute(self) -> None:
        store, model, result = self.store, self.model, self.result
        if self.progress is not None:
            self._ticker = asyncio.create_task(self._tick())
        prefix = store.model_prefix(model)
        transport = transport_for(store, self.options)
        self.manifest = await self._in_pool(Manifest.load, self.mdir.manifest, model)
        # The local check of an unchanged model (a stat per file) runs while the store lists.
        still_complete = asyncio.ensure_future(self._in_pool(self._still_complete)) if self.manifest.listing else None
        try:
            remote = await self._list(transport, prefix, self.manifest.listing)
        except BaseException:
            if still_complete is not None:
                still_complete.cancel()
                await asyncio.gather(still_complete, return_exceptions=True)
            raise
        local_ok = await still_complete if still_complete is not None else False
        if remote.unchanged:
            if local_ok:
                result.objects_listed = remote.objects_listed
                result.versions_kept = sorted(self.manifest.versions)
                await self._in_pool(cleanup_staging, self.mdir, self.manifest.versions)
                return
            remote = await self._list(transport, prefix, "")  # local files changed: the full way
        result.objects_listed = remote.objects_listed
        self.manifest.source = result.source
        recorded, self.manifest.listing = self.manifest.listing, ""  # until this sync is complete
        live = await self._in_pool(self.mdir.live_versions)
        plan = await self._in_pool(plan_versions, remote, live, self.manifest, self.mdir, boot_id(),
                                   self.options.settle_seconds)
        result.versions_kept, result.versions_pending, result.retry_after = plan.kept, plan.pending, plan.retry_after
        if plan.jobs:
            for job in plan.jobs:
                self._count(job)
            self._phase = "downloading"
            fetcher = Fetcher(transport, self.options, self.stop, self.counters)
            self.transfer = Transfer(fetcher, self.mdir, store, self.options, self.pool, self.stop, self.counters)
            await self.transfer.run(plan.jobs, self._finish_job)
        await self._retire(remote)
        await self._in_pool(cleanup_staging, self.mdir, remote.versions)
        if not remote.versions and not remote.uploading:
            result.error = (
                f"no versions of model {model!r} in s3://{store.bucket}/{prefix} "
                f"at {store.endpoint_url} (a version is a numeric directory)"
            )
        complete = not (result.error or result.versions_failed or result.versions_pending or self.abort_reason())
        if complete and sorted(self.manifest.versions) == sorted(remote.versions):
            self.manifest.listing = remote.digest
            if remote.digest != recorded or result.changed:
                async with self._manifest_lock:
                    await self._in_pool(self.manifest.save, self.mdir.manifest)

    async def _list(self, transport: Transport, prefix: str, known: str) -> RemoteModel:
        try:
            shape = [len(files) for files in self.manifest.versions.values()]
            return await list_model(transport, prefix, self.pool, self.options.request_attempts, known, shape)
        except Exception as e:
            store = self.store
            raise StoreError(describe(e, store, f"cannot list s3://{store.bucket}/{prefix}")) from e

    def _still_complete(self) -> bool:
        """The live versions are the manifest's, every file present (blocking: a stat each)."""
        versions = self.manifest.versions
        return sorted(versions) == self.mdir.live_versions() and all(
            files_present(self.mdir.version(v), files) for v, files in versions.items())

    def _count(self, job: Job) -> None:
        """Add a staged job to the progress totals (what staging holds counts as done)."""
        c = self.counters
        c.files_total += len(job.objects)
        c.files_done += len(job.objects) - len(job.fetch)
        c.bytes_total += sum(o.size for o in job.objects.values())
        c.add_bytes(job.reused)
        self.result.bytes_reused += job.reused

    async def _finish_job(self, job: Job) -> None:
        """Publish a fetched version, or record why it failed."""
        assert job.journal is not None
        v = job.version
        if job.error is not None:
            job.journal.close()
            self.result.versions_failed[v] = scrub(job.error, self.store)
            return
        async with self._manifest_lock:
            await self._in_pool(publish_version, self.mdir, self.manifest, v, job.want, job.journal, job.replace)
        (self.result.versions_replaced if job.replace else self.result.versions_added).append(v)
        self.result.versions_replaced.sort()
        self.result.versions_added.sort()

    async def _retire(self, remote: RemoteModel) -> None:
        """Remove live versions the store no longer has, keeping at least one loadable."""
        async with self._manifest_lock:
            removed = await self._in_pool(retire_gone, self.mdir, self.manifest, remote)
        self.result.versions_removed.extend(removed)
