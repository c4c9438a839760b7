"""The model server's own metrics, in Prometheus text at TF Serving's path
(`/monitoring/prometheus/metrics`) and under TF Serving's names where it has one.

TF Serving's monitoring names (`/tensorflow/serving/request_count`) become Prometheus
names by turning `/` into `:` (`:tensorflow:serving:request_count`), and its counters
carry no `_total` suffix; prometheus_client cannot write either, so the text is written
here. Label values never come from a request as sent: a model name is one of the
configured models (any other name is counted as UNKNOWN_MODEL), a version is one the
server resolved and loaded, a status is a canonical error code name, so a client cannot
grow the number of series.

Thread-safe: requests are recorded on the event loop, batches on batch threads."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from agent.serving import tracing
from agent.serving.errors import ServingError
from agent.serving.request_log import RequestLog, cut
from agent.serving.protos import error_codes_pb2 as codes

PATH = "/monitoring/prometheus/metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A name no models.config entry can make a request count under (parentheses are not
# allowed in a model name by the agent's parameters).
UNKNOWN_MODEL = "(unknown)"

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
LOAD_ATTEMPTS = ":tensorflow:cc:saved_model:load_attempt_count"
LOAD_LATENCY = ":tensorflow:cc:saved_model:load_latency"
WARMUP_LATENCY = ":tensorflow:serving:model_warmup_latency"
INPUT_BATCH_SIZE = ":tensorflow:serving:batching_session:input_batch_size"
PROCESSED_BATCH_SIZE = ":tensorflow:serving:batching_session:processed_batch_size"
PADDING_SIZE = ":tensorflow:serving:batching_session:padding_size"
QUEUING_LATENCY = ":tensorflow:serving:batching_session:queuing_latency"

# TF Serving's latency buckets (microseconds): scale 10, factor 1.8, 33 buckets (~20 min).
LATENCY_BUCKETS = tuple(10 * 1.8**i for i in range(33))
# Batch sizes: powers of two up to 2**14, as TF Serving's batching session.
SIZE_BUCKETS = tuple(float(2**i) for i in range(15))

_HELP = {
    REQUEST_COUNT: ("counter", "The total number of requests."),
    REQUEST_LATENCY: ("histogram", "Distribution of wall time (in microseconds) for Tensorflow Serving request."),
    LOAD_ATTEMPTS: ("counter", "The number of times a model version was loaded, by outcome."),
    LOAD_LATENCY: ("counter", "Latency in microseconds for model versions that were successfully loaded."),
    WARMUP_LATENCY: ("histogram", "Distribution of wall time (in microseconds) for warming up the model."),
    INPUT_BATCH_SIZE: ("histogram", "Tracks the batch size distribution on the inputs by model."),
    PROCESSED_BATCH_SIZE: ("histogram", "Tracks the batch size distribution on processing by model."),
    PADDING_SIZE: ("histogram", "Tracks the padding size distribution on batches by model."),
    QUEUING_LATENCY: ("histogram", "Distribution of wall time (in microseconds) a request waited for its batch."),
}

Labels = tuple[tuple[str, str], ...]
_LE_INF = 'le="+Inf"'


@dataclass
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.bounds)

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        self.total += value
        self.count += 1


def status_name(code: int) -> str:
    """The canonical name of an error code (OK, INVALID_ARGUMENT, ...), as TF Serving labels it."""
    try:
        return codes.Code.Name(code)
    except ValueError:
        return "UNKNOWN"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_text(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class ServingMetrics:
    """Every metric of one model server; `is_model` says which names are configured."""

    def __init__(self, is_model: Callable[[str], bool] = lambda name: False, request_log: RequestLog | None = None):
        self._is_model = is_model
        self.request_log = request_log
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = {}
        self._histograms: dict[str, dict[Labels, _Histogram]] = {}

    def model_label(self, name: str) -> str:
        """The name as a label value: a configured model's name, else UNKNOWN_MODEL."""
        return name if self._is_model(name) else UNKNOWN_MODEL

    def _add(self, metric: str, labels: Labels, amount: float = 1.0) -> None:
        with self._lock:
            series = self._counters.setdefault(metric, {})
            series[labels] = series.get(labels, 0.0) + amount

    def _observe(self, metric: str, labels: Labels, value: float, bounds: tuple[float, ...]) -> None:
        with self._lock:
            series = self._histograms.setdefault(metric, {})
            histogram = series.get(labels)
            if histogram is None:
                histogram = series[labels] = _Histogram(bounds)
            histogram.observe(value)

    def request(self, api: str, entrypoint: str, model: str, carrier: Mapping[str, str] | None = None) -> "RequestRecord":
        """Start counting one inference request (use as a context manager); with tracing
        on, also its server span, joined to the `traceparent` in `carrier` (headers)."""
        return RequestRecord(self, api, entrypoint, self.model_label(model), carrier)

    def record_request(self, model: str, version: str, api: str, entrypoint: str, code: int, seconds: float) -> None:
        """Count one finished request and its latency (model already a label value)."""
        self._add(REQUEST_COUNT, (("model_name", model), ("version", version), ("status", status_name(code))))
        self._observe(REQUEST_LATENCY, (("model_name", model), ("version", version), ("API", api),
                                        ("entrypoint", entrypoint)), seconds * 1e6, LATENCY_BUCKETS)

    def record_load(self, path: str, ok: bool, seconds: float) -> None:
        """Count one load attempt of a version directory, and its time when it succeeded."""
        self._add(LOAD_ATTEMPTS, (("model_path", path), ("status", "success" if ok else "fail")))
        if ok:
            self._add(LOAD_LATENCY, (("model_path", path),), seconds * 1e6)

    def record_warmup(self, path: str, seconds: float) -> None:
        """The time a version's warmup took."""
        self._observe(WARMUP_LATENCY, (("model_path", path),), seconds * 1e6, LATENCY_BUCKETS)

    def record_batch(self, model: str, input_rows: int, processed_rows: int, queued_seconds: Iterable[float]) -> None:
        """One batch run: its rows as sent, as run (padded), and how long each request waited."""
        labels = (("model_name", model),)
        self._observe(INPUT_BATCH_SIZE, labels, input_rows, SIZE_BUCKETS)
        self._observe(PROCESSED_BATCH_SIZE, labels, processed_rows, SIZE_BUCKETS)
        self._observe(PADDING_SIZE, labels, processed_rows - input_rows, SIZE_BUCKETS)
        for seconds in queued_seconds:
            self._observe(QUEUING_LATENCY, labels, seconds * 1e6, LATENCY_BUCKETS)

    def render(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4) of every metric."""
        with self._lock:
            counters = {m: dict(s) for m, s in self._counters.items()}
            histograms = {m: {k: (h.bounds, list(h.counts), h.total, h.count) for k, h in s.items()}
                          for m, s in self._histograms.items()}
        lines: list[str] = []
        for metric, (kind, help_text) in _HELP.items():
            if metric in counters:
                lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
                for labels, value in sorted(counters[metric].items()):
                    lines.append(f"{metric}{_label_text(labels)} {_number(value)}")
            if metric in histograms:
                lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
                for labels, (bounds, counts, total, count) in sorted(histograms[metric].items()):
                    running = 0
                    for bound, n in zip(bounds, counts):
                        running += n
                        le = 'le="' + _number(bound) + '"'
                        lines.append(f"{metric}_bucket{_label_text(labels, le)} {running}")
                    lines.append(f"{metric}_bucket{_label_text(labels, _LE_INF)} {count}")
                    lines.append(f"{metric}_sum{_label_text(labels)} {_number(total)}")
                    lines.append(f"{metric}_count{_label_text(labels)} {count}")
        return ("\n".join(lines) + "\n").encode() if lines else b""


class RequestRecord:
    """One inference request being counted (and traced, when tracing is on): the handler
    says which version served it (`served`) and how it ended (`fail`, or a ServingError
    leaving the `with` block)."""

    def __init__(self, metrics: ServingMetrics, api: str, entrypoint: str, model: str,
                 carrier: Mapping[str, str] | None = None):
        self._metrics = metrics
        self.api = api
        self.entrypoint = entrypoint
        self.model = model
        self.version = ""
        self.code = codes.OK
        self._started = 0.0
        self._span = tracing.request_span(api, carrier or {}, {"model": model, "entrypoint": entrypoint})
        # Sampled for the request log (decided now, before any work); its input and output.
        self.logged = metrics.request_log is not None and metrics.request_log.sampled()
        self.input: Any = None
        self.output: Any = None

    def served(self, servable) -> None:
        """The loaded version that takes the request."""
        self.version = str(servable.version)

    def io(self, given: Any = None, answered: Any = None) -> None:
        """The request's input and output (bytes, text or protobuf messages) for the request
        log; kept only when this request is sampled."""
        if self.logged:
            self.input = given if given is not None else self.input
            self.output = answered if answered is not None else self.output

    def fail(self, error: ServingError) -> ServingError:
        """Record the error the request is answered with; returns it."""
        self.code = error.code
        return error

    def __enter__(self) -> "RequestRecord":
        self._started = time.perf_counter()
        self._span.__enter__()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if isinstance(error, ServingError):
            self.code = error.code
        elif isinstance(error, MemoryError):
            self.code = codes.RESOURCE_EXHAUSTED
        elif error is not None and isinstance(error, Exception):
            self.code = codes.INTERNAL
        elif error is not None:  # cancelled: the client went away
            self.code = codes.CANCELLED
        seconds = time.perf_counter() - self._started
        self._metrics.record_request(self.model, self.version, self.api, self.entrypoint, self.code, seconds)
        if self.logged and self._metrics.request_log is not None:
            cap = self._metrics.request_log.max_bytes
            self._metrics.request_log.write({
                "api": self.api, "entrypoint": self.entrypoint, "model": self.model, "version": self.version,
                "status": status_name(self.code), "latency_ms": round(seconds * 1000, 3),
                "input": cut(self.input, cap) if self.input is not None else None,
                "output": cut(self.output, cap) if self.output is not None else None,
            })
        self._span.__exit__(kind, error, traceback)
