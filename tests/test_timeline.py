"""The console's timeline: rates and quantiles from counter deltas, the model server's
metrics read back as the sampler reads them, and memory bounded under an hour (and
more) of samples."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from agent.console.sampler import parse_serving_metrics
from agent.serving.metrics import ServingMetrics
from agent.serving.protos import error_codes_pb2 as codes
from agent.console.timeline import MAX_EVENT_TEXT, Counters, Point, Rates, Timeline, quantile, rates, total


def test_quantiles_interpolate_within_the_bucket_as_prometheus_does():
    buckets = ((10.0, 0.0), (100.0, 50.0), (1000.0, 100.0), (float("inf"), 100.0))
    assert quantile(0.5, buckets) == pytest.approx(100.0)
    assert quantile(0.25, buckets) == pytest.approx(55.0)
    assert quantile(0.99, buckets) == pytest.approx(982.0)
    assert quantile(0.5, ((10.0, 0.0), (float("inf"), 0.0))) is None
    assert quantile(0.99, ((10.0, 1.0), (float("inf"), 100.0))) == 10.0  # past the last bound


def test_rates_from_deltas_with_restarts_and_new_series():
    before = {"a": Counters(100, 10), "b": Counters(500, 0)}
    now = {"a": Counters(150, 20), "b": Counters(20, 5), "c": Counters(7, 0)}
    out = rates(now, before, 10.0)
    assert out["a"] == Rates(rps=5.0, error_rate=0.2)
    assert out["b"] == Rates(rps=2.0, error_rate=0.25)  # went down: restarted, counted from zero
    assert out["c"] == Rates(rps=0.0, error_rate=0.0)  # new: no rate before a second sample


def test_the_model_servers_own_metrics_read_back_per_version_with_latency():
    metrics = ServingMetrics(lambda name: name == "m")
    for seconds, code in [(0.002, codes.OK)] * 98 + [(0.5, codes.OK), (0.001, codes.INVALID_ARGUMENT)]:
        metrics.record_request("m", "3", "Predict", "REST", code, seconds)
    metrics.record_request("m", "3", "Predict", "GRPC", codes.OK, 0.002)
    metrics.record_load("/models/m/3", True, 1.5)
    before = parse_serving_metrics(ServingMetrics().render().decode() or "")
    scrape = parse_serving_metrics(metrics.render().decode())
    assert scrape.loads == {"/models/m/3": 1.0}
    c = scrape.versions["m/3"]
    assert (c.requests, c.errors) == (101, 1)
    r = rates({"m/3": c}, {"m/3": Counters(0, 0, tuple((b, 0.0) for b, _ in c.buckets))}, 1.0)["m/3"]
    assert r.rps == 101 and r.error_rate == pytest.approx(1 / 101)
    assert 1.0 < r.p50_ms < 3.5 and r.p99_ms > 1.0
    assert before.versions == {}


def test_the_sum_of_nodes_adds_histograms_bucket_by_bucket():
    a = Counters(10, 1, ((1.0, 4.0), (float("inf"), 10.0)))
    b = Counters(5, 0, ((1.0, 5.0), (float("inf"), 5.0)))
    assert total([a, b]) == Counters(15, 1, ((1.0, 9.0), (float("inf"), 15.0)))


def _point(t: float) -> Point:
    r = Rates(12.5, 0.01, 3.2, 40.1)
    return Point(t, nodes={f"127.0.0.{i}": r for i in range(3)},
                 models={f"model{i}/{v}": r for i in range(2) for v in (1, 2)},
                 upstreams={f"127.0.0.{i}": Rates(4.0, 0.0) for i in range(3)})


def test_memory_stays_bounded_under_an_hour_of_samples_and_more():
    # An hour at the shortest interval (1 s): 3600 points, then as much again; the ring
    # keeps the last hour and the memory it holds stops growing once it is full.
    timeline = Timeline(window=3600.0, max_points=3600)
    t0 = 1_700_000_000.0
    gc.collect()
    tracemalloc.start()
    try:
        for i in range(3600):
            timeline.add_point(_point(t0 + i))
        gc.collect()
        full, _ = tracemalloc.get_traced_memory()
        for i in range(3600, 3 * 3600):
            timeline.add_point(_point(t0 + i))
            timeline.add_event("loaded", "x" * 1000, t0 + i)
        gc.collect()
        later, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(timeline) == 3600
    assert timeline.times()[0] == t0 + 2 * 3600
    assert len(timeline.events()) <= 500 and all(len(e.text) == MAX_EVENT_TEXT for e in timeline.events())
    assert full < 40 * 1024 * 1024
    assert later - full < 2 * 1024 * 1024 + 500 * (MAX_EVENT_TEXT + 200), (full, later)


def test_series_that_leave_the_window_leave_the_charts():
    timeline = Timeline(window=100.0, max_points=10)
    timeline.add_point(Point(1.0, nodes={"gone": Rates(1.0, 0.0)}))
    for i in range(2, 12):
        timeline.add_point(Point(float(i), nodes={"stays": Rates(2.0, 0.0)}))
    columns = timeline.columns()
    assert list(columns["nodes"]) == ["stays"] and len(columns["t"]) == 10


def test_a_shortened_window_drops_old_points_and_events_by_age():
    timeline = Timeline(window=10.0, max_points=1000)
    for i in range(100):
        timeline.add_point(_point(1000.0 + i * 0.5))
    assert timeline.times()[0] >= 1000.0 + 99 * 0.5 - 10.0
    columns = timeline.columns(since=1000.0 + 99 * 0.5 - 1.0)
    assert len(columns["t"]) == 2 and set(columns["nodes"]) == {"127.0.0.0", "127.0.0.1", "127.0.0.2"}
    assert columns["nodes"]["127.0.0.1"]["rps"] == [12.5, 12.5] and columns["nodes"]["127.0.0.1"]["err"] == [1.0, 1.0]
