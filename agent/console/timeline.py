"""The console's recent history: a bounded in-memory ring of rates sampled every few
seconds (requests/s, error rate, p50/p99 latency per serving node, per model version and
per Envoy upstream) and the events worth a marker on the charts.

Rates come from counter deltas between two scrapes: the model servers' TF Serving
metrics (request_count, request_latency) and Envoy's per-host counters. Quantiles are
read from the latency histograms' bucket deltas as Prometheus' histogram_quantile does;
bucket counts of several model servers add up honestly (same buckets), quantiles never
do, so a model version's latency is computed from the summed buckets.

Memory is bounded whatever runs: at most MAX_POINTS points (and none older than the
window), MAX_SERIES series per group and MAX_EVENTS events, each of bounded size."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from itertools import islice
from dataclasses import dataclass, field
from typing import Iterable, Mapping

WINDOW_SECONDS = 3600.0
MAX_POINTS = 3600  # an hour at 1 s, the shortest interval
MAX_SERIES = 64  # per group (nodes, models, upstreams): serving nodes and models come from metadata
MAX_EVENTS = 500
MAX_EVENT_TEXT = 200
GROUPS = ("nodes", "models", "upstreams")

Buckets = tuple[tuple[float, float], ...]  # (upper bound, cumulative count), +Inf last


@dataclass(frozen=True)
class Counters:
    """Cumulative counters of one series at one scrape."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: Buckets = ()  # latency histogram in microseconds; () when the source has none


@dataclass(frozen=True)
class Rates:
    """What a chart draws for one series over one interval."""

    rps: float
    error_rate: float  # errors / requests over the interval, 0..1 (0 without requests)
    p50_ms: float | None = None
    p99_ms: float | None = None


@dataclass(frozen=True)
class Point:
    """One sample: rates per series of each group."""

    t: float
    nodes: Mapping[str, Rates] = field(default_factory=dict)
    models: Mapping[str, Rates] = field(default_factory=dict)
    upstreams: Mapping[str, Rates] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """Something that happened, for a marker: kind is one of EVENT_KINDS."""

    t: float
    kind: str
    text: str


EVENT_KINDS = ("applied", "rejected", "switched", "loaded", "synced", "node_added", "node_removed", "drained")


def add_buckets(a: Buckets, b: Buckets) -> Buckets:
    """Two histograms with the same bounds summed (a different layout keeps `a`)."""
    if not a:
        return b
    if not b or [x for x, _ in a] != [x for x, _ in b]:
        return a
    return tuple((bound, x + y) for (bound, x), (_, y) in zip(a, b))


def quantile(q: float, buckets: Buckets) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated in its bucket (None when empty)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower  # past the last finite bound: its lower edge, as Prometheus does
            span = count - below
            return lower + (bound - lower) * ((rank - below) / span if span > 0 else 1.0)
        lower, below = bound, count
    return lower


def _delta(now: Counters, before: Counters | None) -> Counters:
    """What happened between two scrapes; a counter that went down was reset (a restart)."""
    if before is None:
        return Counters()
    if now.requests < before.requests or now.errors < before.errors:
        return now
    buckets: Buckets = ()
    if now.buckets and before.buckets and [b for b, _ in now.buckets] == [b for b, _ in before.buckets]:
        buckets = tuple((bound, max(0.0, x - y)) for (bound, x), (_, y) in zip(now.buckets, before.buckets))
    elif now.buckets and not before.buckets:
        buckets = now.buckets
    return Counters(now.requests - before.requests, now.errors - before.errors, buckets)


def rates(now: Mapping[str, Counters], before: Mapping[str, Counters], seconds: float) -> dict[str, Rates]:
    """Per series, the rates between two scrapes `seconds` apart (series new since then start at 0)."""
    out = {}
    for key in sorted(now)[:MAX_SERIES]:
        d = _delta(now[key], before.get(key))
        p50 = quantile(0.5, d.buckets)
        p99 = quantile(0.99, d.buckets)
        out[key] = Rates(
            rps=d.requests / seconds if seconds > 0 else 0.0,
            error_rate=d.errors / d.requests if d.requests > 0 else 0.0,
            p50_ms=p50 / 1000 if p50 is not None else None,
            p99_ms=p99 / 1000 if p99 is not None else None,
        )
    return out


METRICS = ("rps", "err", "p50", "p99")


def _values(r: Rates) -> tuple[float | None, ...]:
    """A point's values as the charts draw them (rounded once, when sampled)."""
    return (round(r.rps, 3), round(100 * r.error_rate, 2), _ms(r.p50_ms), _ms(r.p99_ms))


class _Series:
    """One series' columns, aligned with the timeline's times."""

    def __init__(self, missing: int):
        self.columns = [deque([None] * missing) for _ in METRICS]
        self.present = 0  # points that have a value: at 0 the series is dropped


class Timeline:
    """The ring of samples, kept as columns (what the charts ask for), and the events;
    written by the sampler, read by the console."""

    def __init__(self, window: float = WINDOW_SECONDS, max_points: int = MAX_POINTS, max_events: int = MAX_EVENTS):
        self.window = window
        self.max_points = max_points
        self._t: deque[float] = deque()
        self._series: dict[str, dict[str, _Series]] = {group: {} for group in GROUPS}
        self._events: deque[Event] = deque(maxlen=max_events)
        self._lock = threading.Lock()  # the bench and tests read from other threads
        self.interval = 5.0

    def __len__(self) -> int:
        return len(self._t)

    def times(self) -> list[float]:
        """The sample times, oldest first."""
        with self._lock:
            return list(self._t)

    def add_point(self, point: Point) -> None:
        """Append a sample; the oldest go when the ring is full or past the window."""
        with self._lock:
            if len(self._t) >= self.max_points:
                self._drop_oldest()
            count = len(self._t)
            self._t.append(round(point.t, 3))
            for group in GROUPS:
                values = getattr(point, group)
                series = self._series[group]
                for key in values:
                    if key not in series and len(series) < MAX_SERIES:
                        series[key] = _Series(count)
                for key, s in series.items():
                    r = values.get(key)
                    if r is None:
                        for column in s.columns:
                            column.append(None)
                    else:
                        for column, value in zip(s.columns, _values(r)):
                            column.append(value)
                        s.present += 1
            self._prune(point.t)

    def _drop_oldest(self) -> None:
        self._t.popleft()
        for series in self._series.values():
            for key in list(series):
                s = series[key]
                had = s.columns[0][0] is not None
                for column in s.columns:
                    column.popleft()
                if had:
                    s.present -= 1
                    if s.present == 0:
                        del series[key]

    def add_event(self, kind: str, text: str, t: float | None = None) -> None:
        """Record an event for a marker."""
        event = Event(t if t is not None else time.time(), kind, text[:MAX_EVENT_TEXT])
        with self._lock:
            self._events.append(event)
            self._prune(max(event.t, self._t[-1] if self._t else event.t))

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        while self._t and self._t[0] < horizon:
            self._drop_oldest()
        while self._events and self._events[0].t < horizon:
            self._events.popleft()

    def events(self) -> list[Event]:
        """Every event in the window, oldest first."""
        with self._lock:
            return sorted(self._events, key=lambda e: e.t)

    def columns(self, since: float = 0.0) -> dict:
        """The samples after `since` as columns for the charts, and every event of the window
        (few, and an event may be dated before the last sample):
        {t: [...], events: [...], nodes|models|upstreams: {key: {rps, err, p50, p99: [...]}}}."""
        with self._lock:
            start = len(self._t)
            for t in reversed(self._t):
                if t <= since:
                    break
                start -= 1
            out: dict = {"interval": self.interval, "window": self.window, "t": list(islice(self._t, start, None)),
                         "events": [{"t": round(e.t, 3), "kind": e.kind, "text": e.text}
                                    for e in sorted(self._events, key=lambda e: e.t)]}
            for group in GROUPS:
                out[group] = {key: {m: list(islice(c, start, None)) for m, c in zip(METRICS, s.columns)}
                              for key, s in sorted(self._series[group].items())}
        return out


def _ms(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


def total(items: Iterable[Counters]) -> Counters:
    """Several series' counters added up (histograms bucket by bucket)."""
    requests = errors = 0.0
    buckets: Buckets = ()
    for c in items:
        requests += c.requests
        errors += c.errors
        buckets = add_buckets(buckets, c.buckets)
    return Counters(requests, errors, buckets)
