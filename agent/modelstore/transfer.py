"""Fetching the objects of staged versions: small files by worker threads draining one
queue, large (multipart) ones as parallel ranges on their part boundaries, each part
hashed as it lands and journalled once written, so a retry or the next sync asks only
for the parts still missing. A version is handed on as soon as all its files are in.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable

from agent.modelstore.config import StoreConfig, SyncOptions
from agent.modelstore.download import Cancelled, Counters, Fetcher, FetchError, ObjectPlan
from agent.modelstore.errors import describe
from agent.modelstore.layout import ModelDir
from agent.modelstore.listing import RemoteObject
from agent.modelstore.staging import Job


class Transfer:
    """Runs the jobs of one sync. `stop` set (by a cancel, or when the endpoint turns out
    to be down: then `abort_reason` says why) makes every worker give up between chunks."""

    def __init__(self, fetcher: Fetcher, mdir: ModelDir, store: StoreConfig, options: SyncOptions,
                 pool: ThreadPoolExecutor, stop: threading.Event, counters: Counters):
        self.fetcher = fetcher
        self.mdir = mdir
        self.store = store
        self.options = options
        self.pool = pool
        self.stop = stop
        self.counters = counters
        self.abort_reason: str | None = None
        self.reused = 0  # bytes of parts found in staging

    async def _in_pool(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def run(self, jobs: list[Job], done: Callable[[Job], Awaitable[None]]) -> None:
        """Fetch every job's objects; `done(job)` is awaited for each job once its files are
        all in and verified, or it failed (`job.error`)."""
        # Multipart objects are probed first so their ranges can start before small files.
        multipart = [o for job in jobs for o in job.fetch if o.etag.multipart and o.size > 0]
        plans: dict[str, ObjectPlan] = {}
        probes = await asyncio.gather(*(self._in_pool(self.fetcher.plan, o) for o in multipart),
                                      return_exceptions=True)
        for obj, found in zip(multipart, probes):
            if isinstance(found, BaseException):
                self._fail_object(jobs, obj, self._failure(obj, found))
            else:
                plans[obj.key] = found
        streams = max(1, self.options.multipart_streams // max(1, len(multipart)))
        tasks = [asyncio.ensure_future(self._run_job(job, plans, streams, done)) for job in jobs]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()

    async def _run_job(self, job: Job, plans: dict[str, ObjectPlan], streams: int,
                       done: Callable[[Job], Awaitable[None]]) -> None:
        if job.error is None:
            await self._fetch_all(job, plans, streams)
        await done(job)

    def _fail_object(self, jobs: list[Job], obj: RemoteObject, message: str) -> None:
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

    def _note_unreachable(self, exc: BaseException) -> None:
        """Stop every worker at once when the endpoint itself is down (thread-safe)."""
        if isinstance(exc, FetchError) and exc.unreachable and self.abort_reason is None:
            self.abort_reason = describe(exc.__cause__ or exc, self.store, "download stopped")
            self.stop.set()

    async def _fetch_all(self, job: Job, plans: dict[str, ObjectPlan], streams: int) -> None:
        """Fetch the job's objects: ranged ones as parallel spans, the rest by worker
        threads draining one queue (an asyncio round trip per file would cost more CPU
        than the file itself)."""
        ranged = sorted((o for o in job.fetch if o.key in plans), key=lambda o: -o.size)
        queue = collections.deque(sorted((o for o in job.fetch if o.key not in plans), key=lambda o: -o.size))
        failures: list[tuple[RemoteObject, BaseException]] = []

        limit = self.fetcher.in_flight

        def drain() -> None:
            with limit:
                while not self.stop.is_set():
                    limit.keep()
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
            *(self._fetch_ranged(job, o, plans[o.key], streams) for o in ranged),
            *(self._in_pool(drain) for _ in range(workers)),
            return_exceptions=True,
        )
        failures += [(o, e) for o, e in zip(ranged, outcomes) if isinstance(e, BaseException)]
        for obj, exc in failures:
            message = self._failure(obj, exc)
            job.error = job.error or message
        if queue and job.error is None:  # stopped before every object was tried
            job.error = self._failure(queue[0], Cancelled())

    def _fetch_whole(self, job: Job, obj: RemoteObject) -> None:
        """Fetch one object in one GET, verify it, record it (blocking, in a worker)."""
        assert job.journal is not None
        self.fetcher.fetch_whole(obj, self.mdir.staging(job.version) / obj.rel)
        job.journal.add(obj.rel, obj.size, obj.etag.raw)
        self.counters.add_file(fetched=True)

    async def _fetch_ranged(self, job: Job, obj: RemoteObject, plan: ObjectPlan, streams: int) -> None:
        """Fetch a multipart object as spans on its part boundaries, each part hashed as it
        lands and journalled once written (so a later sync resumes at the part level),
        then verify the whole against its checksum."""
        fetcher = self.fetcher
        assert job.journal is not None
        journal = job.journal
        dest = self.mdir.staging(job.version) / obj.rel
        cuts = plan.cuts
        algorithm = plan.checksum.algorithm if plan.checksum is not None else None
        try:
            if cuts is None or len(cuts) < 2 or algorithm is None:
                await self._in_pool(fetcher.fetch_whole, obj, dest, plan)
            else:
                alg, done = job.parts.get(obj.rel, ("", {}))
                resumed = {i: d for i, d in done.items() if i < len(cuts)} if alg == algorithm else {}
                if resumed:
                    reused = sum(cuts[i] for i in resumed)
                    self.reused += reused
                    self.counters.add_bytes(reused)
                else:
                    await self._in_pool(fetcher.prepare_file, dest, obj.size)
                missing = [i for i in range(len(cuts)) if i not in resumed]
                found = dict(resumed)

                def landed(index: int, digest: bytes) -> None:
                    found[index] = digest
                    journal.add_part(obj.rel, obj.etag.raw, index, digest, algorithm)

                await asyncio.gather(*(
                    self._in_pool(fetcher.fetch_parts, obj, dest, start, first, run, algorithm, landed)
                    for start, first, run in Fetcher.part_spans(cuts, missing, streams)
                ))
                try:
                    await self._in_pool(fetcher.finish_multipart, obj, dest, plan,
                                        [found[i] for i in range(len(cuts))])
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
