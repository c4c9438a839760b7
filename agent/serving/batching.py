"""Server-side batching with TF Serving's semantics and parameter names.

Concurrent runs of the same graph with compatible inputs (same names, dtypes and
per-example shapes) are concatenated along the batch dimension, run once, and the outputs
are split back by each request's rows. A batch runs when it is full (max_batch_size rows)
or when batch_timeout_micros has passed since its first request was queued, on one of
num_batch_threads threads. A merged run that fails is retried request by request, so a
bad request fails alone. When max_enqueued_batches x max_batch_size requests are waiting
(that many full batches), new requests are refused with UNAVAILABLE (Envoy retries them
on another node).

Only graphs whose every input has a leading unknown (batch) dimension are batched; other
runs, and a single request larger than max_batch_size, run directly."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

import agent.log
from agent.serving import tracing
from agent.serving.errors import ServingError, internal, invalid_argument, unavailable
from agent.serving.metrics import ServingMetrics
from agent.serving.servable import Servable

log = agent.log.get(__name__)


@dataclass(frozen=True)
class BatchingOptions:
    """TF Serving's batching parameters (session_bundle_config BatchingParameters)."""

    enabled: bool = True
    max_batch_size: int = 32
    batch_timeout_micros: int = 1000
    max_enqueued_batches: int = 64
    num_batch_threads: int = 1
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self):
        if self.max_batch_size < 1 or self.max_enqueued_batches < 1 or self.num_batch_threads < 1:
            raise ValueError("max_batch_size, max_enqueued_batches and num_batch_threads must be at least 1")
        if self.batch_timeout_micros < 0:
            raise ValueError("batch_timeout_micros must not be negative")
        sizes = self.allowed_batch_sizes
        if sizes:
            if list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
                raise ValueError(f"allowed_batch_sizes must be increasing positive sizes, got {list(sizes)}")
            if sizes[-1] != self.max_batch_size:
                raise ValueError(
                    f"the last of allowed_batch_sizes ({sizes[-1]}) must equal max_batch_size ({self.max_batch_size})"
                )


def parse_sizes(text: str) -> tuple[int, ...]:
    """'1,8,32' -> (1, 8, 32); '' -> ()."""
    return tuple(int(p) for p in text.replace(" ", "").split(",") if p)


@dataclass
class _Task:
    feeds: dict[str, np.ndarray]
    output_names: list[str]
    graph: str
    key: tuple
    rows: int
    enqueued: float
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, np.ndarray] | None = None
    error: BaseException | None = None
    trace: object = None  # the request's span context (tracing on)


def batch_graphs(servable: Servable) -> set[str]:
    """The graphs of a servable whose every input has a leading unknown batch dimension."""
    ok: dict[str, bool] = {}
    for signature in servable.signatures.values():
        specs = list(signature.features.values()) if signature.takes_examples else list(signature.inputs.values())
        batchable = bool(specs) and all(s.shape is not None and len(s.shape) >= 1 and s.shape[0] is None for s in specs)
        ok[signature.graph] = ok.get(signature.graph, True) and batchable
    return {graph for graph, batchable in ok.items() if batchable}


class BatchingServable(Servable):
    """A servable whose runs are merged into batches; everything else is the wrapped one's."""

    def __init__(self, inner: Servable, options: BatchingOptions, metrics: ServingMetrics | None = None):
        super().__init__(inner.name, inner.version, inner.path)
        self.inner = inner
        self.signatures = inner.signatures
        self.runtime = inner.runtime
        self.precision = inner.precision
        self.signature_defs = inner.signature_defs
        self.refused = inner.refused
        self.options = options
        self._metrics = metrics
        self._graphs = batch_graphs(inner)
        self._queue: deque[_Task] = deque()
        self._cond = threading.Condition()
        self._closed = False
        # Batches of more than one request, the requests in them, the largest batch (rows).
        self.merged_batches = 0
        self.merged_requests = 0
        self.largest_batch = 0
        self._threads = [
            threading.Thread(target=self._loop, name=f"batch-{inner.name}-{inner.version}-{i}", daemon=True)
            for i in range(options.num_batch_threads)
        ]
        for t in self._threads:
            t.start()

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str], graph: str = "") -> dict[str, np.ndarray]:
        """Queue the run for a batch and wait for its share of the outputs."""
        rows = _rows(feeds)
        if graph not in self._graphs or rows is None or rows > self.options.max_batch_size:
            return tracing.traced_run(self.inner.run)(feeds, output_names, graph)
        key = (graph, tuple(output_names), _signature_key(feeds, self.options.pad_variable_length_inputs))
        task = _Task(feeds, list(output_names), graph, key, rows, time.monotonic(), trace=tracing.current())
        limit = self.options.max_enqueued_batches * self.options.max_batch_size
        with self._cond:
            closed = self._closed
            if not closed and len(self._queue) >= limit:
                raise unavailable("The batch scheduling queue to which this task was submitted is full")
            if not closed:
                self._queue.append(task)
                self._cond.notify()
        if closed:
            # Unloaded while this request was on its way: it still gets an answer, unbatched.
            return self.inner.run(feeds, output_names, graph)
        task.done.wait()
        if task.error is not None:
            raise task.error
        assert task.result is not None
        return task.result

    def details(self) -> dict:
        """Runtime details for status: the wrapped servable's plus batching counters."""
        with self._cond:
            batching = {"max_batch_size": self.options.max_batch_size, "merged_batches": self.merged_batches,
                        "merged_requests": self.merged_requests, "largest_batch": self.largest_batch,
                        "queued": len(self._queue)}
        return {**self.inner.details(), "batching": batching}

    def close(self) -> None:
        """Stop batching: the batch threads answer what is queued, then end (not awaited:
        this runs on the event loop); later runs go straight to the runtime."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.inner.close()

    def threads(self) -> list[threading.Thread]:
        """The batch threads (the owner joins them after `close`, before releasing this servable)."""
        return list(self._threads)

    # The batch threads.

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run_batch(batch)
            except BaseException as e:  # never leave a caller waiting
                for task in batch:
                    if not task.done.is_set():
                        task.error = internal(f"batch failed: {e!r}")
                        task.done.set()

    def _next_batch(self) -> list[_Task] | None:
        """The next batch: the oldest task and the compatible ones queued before its deadline."""
        timeout = self.options.batch_timeout_micros / 1e6
        limit = self.options.max_batch_size
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            batch, rows = [first], first.rows
            deadline = first.enqueued + timeout
            while rows < limit:
                picked = self._take_compatible(first.key, limit - rows)
                if picked is not None:
                    batch.append(picked)
                    rows += picked.rows
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            if self._queue:
                self._cond.notify()  # another batch thread may start on what is left
            return batch

    def _take_compatible(self, key: tuple, room: int) -> _Task | None:
        for i, task in enumerate(self._queue):
            if task.key == key and task.rows <= room:
                del self._queue[i]
                return task
        return None

    def _run_batch(self, batch: list[_Task]) -> None:
        total = sum(t.rows for t in batch)
        size = total if len(batch) == 1 else _allowed(total, self.options.allowed_batch_sizes)
        now = time.monotonic()
        if self._metrics is not None:
            self._metrics.record_batch(self.name, total, size, [now - t.enqueued for t in batch])
        for task in batch:
            tracing.record("queue", task.trace, task.enqueued, now)
        if len(batch) == 1:
            self._run_alone(batch[0])
            return
        first = batch[0]
        try:
            feeds = _merge([t.feeds for t in batch], size - total, self.options.pad_variable_length_inputs)
            run_started = time.monotonic()
            results = self.inner.run(feeds, first.output_names, first.graph)
            run_ended = time.monotonic()
            if any(np.ndim(v) < 1 or np.shape(v)[0] != size for v in results.values()):
                raise invalid_argument("an output is not batch-major")
        except ServingError:
            # Some request in the batch is bad (or the graph is not batch-major): answer
            # each one on its own so the others are unaffected.
            for task in batch:
                self._run_alone(task)
            return
        with self._cond:
            self.merged_batches += 1
            self.merged_requests += len(batch)
            self.largest_batch = max(self.largest_batch, total)
        start = 0
        ended = time.monotonic()
        attributes = {"batch.requests": len(batch), "batch.rows": total, "batch.size": size}
        for task in batch:
            tracing.record("batch", task.trace, now, ended, attributes)
            tracing.record("run", task.trace, run_started, run_ended, attributes)
            task.result = {name: value[start:start + task.rows] for name, value in results.items()}
            start += task.rows
            task.done.set()

    def _run_alone(self, task: _Task) -> None:
        started = time.monotonic()
        try:
            task.result = self.inner.run(task.feeds, task.output_names, task.graph)
        except BaseException as e:
            task.error = e
        ended = time.monotonic()
        attributes = {"batch.requests": 1, "batch.rows": task.rows, "batch.size": task.rows}
        tracing.record("batch", task.trace, started, ended, attributes)  # a batch of one
        tracing.record("run", task.trace, started, ended, attributes)
        task.done.set()


def _rows(feeds: dict[str, np.ndarray]) -> int | None:
    """The common batch size of the feeds, or None when they have none."""
    sizes = {np.shape(v)[0] if np.ndim(v) >= 1 else None for v in feeds.values()}
    if len(sizes) != 1:
        return None
    rows = sizes.pop()
    return rows if rows else None


def _signature_key(feeds: dict[str, np.ndarray], pad: bool) -> tuple:
    """What must match for two runs to share a batch: names, dtypes and per-example shapes
    (only ranks when variable-length inputs are padded)."""
    return tuple(
        (name, str(v.dtype), v.ndim if pad else v.shape[1:]) for name, v in sorted(feeds.items())
    )


def _merge(feeds: Sequence[dict[str, np.ndarray]], padding_rows: int, pad_lengths: bool) -> dict[str, np.ndarray]:
    merged = {}
    for name in feeds[0]:
        parts = [f[name] for f in feeds]
        if pad_lengths:
            widest = np.max([p.shape for p in parts], axis=0)
            parts = [_pad_to(p, widest[1:]) for p in parts]
        if padding_rows:
            # TF Serving pads a batch up to an allowed size with copies of its first row.
            parts.append(np.repeat(parts[0][:1], padding_rows, axis=0))
        merged[name] = np.concatenate(parts, axis=0)
    return merged


def _pad_to(array: np.ndarray, dims) -> np.ndarray:
    widths = [(0, 0)] + [(0, int(d) - s) for d, s in zip(dims, array.shape[1:])]
    if all(w == (0, 0) for w in widths):
        return array
    return np.pad(array, widths)


def _allowed(total: int, sizes: tuple[int, ...]) -> int:
    for size in sizes:
        if size >= total:
            return size
    return total
