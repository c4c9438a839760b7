"""The model server's spans, off unless `--otlp_endpoint` names an OTLP/gRPC collector:
one server span per inference request, joined to the caller's trace by its W3C
`traceparent` (Envoy's OpenTelemetry tracer sends it), and under it `queue` (waiting for
a batch), `batch` (the merged run's assembly and split) and `run` (the runtime call).

Spans leave through OpenTelemetry's batch processor: a bounded queue (spans past it are
dropped, never blocking a request) exported by its own thread. Contexts cross into the
inference threads with the request's contextvars (`in_context`)."""

from __future__ import annotations

import contextvars
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

SERVICE_NAME = "inference-agent-model-server"
MAX_QUEUED_SPANS = 4096
EXPORT_EVERY_MS = 1000
_PROPAGATOR = TraceContextTextMapPropagator()
_tracer: trace.Tracer | None = None
_provider = None


def setup(endpoint: str) -> None:
    """Export spans to the OTLP/gRPC collector at host:port (plain gRPC: a collector on
    the node's network); an empty endpoint leaves tracing off."""
    global _tracer, _provider
    if not endpoint:
        return
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    _provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    _provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=5),
        max_queue_size=MAX_QUEUED_SPANS, schedule_delay_millis=EXPORT_EVERY_MS))
    _tracer = _provider.get_tracer("agent.serving")


def shutdown() -> None:
    """Export what is queued and stop (at server stop)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def enabled() -> bool:
    """Whether spans are recorded."""
    return _tracer is not None


@contextmanager
def request_span(name: str, carrier: Mapping[str, str], attributes: dict[str, Any]) -> Iterator[None]:
    """A server span for one request, child of the caller's `traceparent` when it sent one,
    current (for the spans below it) until the block ends."""
    if _tracer is None:
        yield
        return
    parent = _PROPAGATOR.extract({k.lower(): v for k, v in carrier.items() if k.lower() in ("traceparent", "tracestate")})
    with _tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes) as span:
        try:
            yield
        except BaseException as e:
            span.set_status(Status(StatusCode.ERROR, type(e).__name__))
            raise


def in_context(fn: Callable, *args: Any) -> Callable[[], Any]:
    """`fn(*args)` bound to this task's context (spans included), for an executor thread."""
    ctx = contextvars.copy_context()
    return lambda: ctx.run(fn, *args)


def current() -> Any:
    """The current span context (to carry to a batch thread), or None when tracing is off."""
    return otel_context.get_current() if _tracer is not None else None


def record(name: str, parent: Any, start: float, end: float, attributes: dict[str, Any] | None = None) -> None:
    """A finished span under `parent` (a context from `current`), timed by time.monotonic()
    readings taken when it happened (batch threads record after the fact)."""
    if _tracer is None or parent is None:
        return
    offset = time.time_ns() - time.monotonic_ns()
    span = _tracer.start_span(name, context=parent, start_time=int(start * 1e9) + offset, attributes=attributes or {})
    span.end(end_time=int(end * 1e9) + offset)


def traced_run(run: Callable) -> Callable:
    """A servable's run with a `run` span around each call (servables that are not batched)."""
    def wrapper(feeds, output_names, graph=""):
        if _tracer is None:
            return run(feeds, output_names, graph)
        with _tracer.start_as_current_span("run", attributes={"graph": graph}):
            return run(feeds, output_names, graph)
    return wrapper
