"""Fills the console's timeline: every few seconds, this node's Envoy's view of every
upstream (admin /clusters) and every serving node's model server metrics (TF Serving's
`/monitoring/prometheus/metrics` on port 8501), turned into rates; and the events worth a
marker, read from the agent's status (metadata applied or rejected, model switched,
sync done, nodes added or removed), from Envoy (a node stops taking requests) and from
the model servers (a version loaded).

One task, owned by the Agent; every call is bounded in time and size, and a node that
does not answer is simply missing from that sample."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Callable

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from agent import log as agent_log
from agent.clients.envoy_admin import EnvoyView, envoy_clusters
from agent.clients.model_server import metrics_text
from agent.ports import SERVING_CLUSTERS
from agent.console.timeline import Buckets, Counters, Point, Timeline, rates, total

log = agent_log.get(__name__)

MAX_NODES = 64  # model servers scraped per sample (serving nodes come from metadata)
TIMEOUT = aiohttp.ClientTimeout(total=2.0, connect=1.0)
MAX_SCRAPE_BYTES = 4 * 1024 * 1024
REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
LOAD_ATTEMPTS = ":tensorflow:cc:saved_model:load_attempt_count"


@dataclass(frozen=True)
class ServerScrape:
    """One model server's counters: per "model/version", and successful loads per version path."""

    versions: dict[str, Counters] = field(default_factory=dict)
    loads: dict[str, float] = field(default_factory=dict)


def version_key(model: str, version: str) -> str:
    """The series name of a model version ("half_plus_two/1"; "/-" when no version took the request)."""
    return f"{model}/{version or '-'}"


def parse_serving_metrics(text: str) -> ServerScrape:
    """The counters the charts need from a model server's Prometheus text."""
    counts: dict[str, list[float]] = {}
    buckets: dict[str, dict[float, float]] = {}
    loads: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == REQUEST_COUNT:
            for s in family.samples:
                key = version_key(s.labels.get("model_name", ""), s.labels.get("version", ""))
                entry = counts.setdefault(key, [0.0, 0.0])
                entry[0] += s.value
                if s.labels.get("status") != "OK":
                    entry[1] += s.value
        elif family.name == REQUEST_LATENCY:
            for s in family.samples:
                if s.name.endswith("_bucket"):  # summed over API and entrypoint
                    key = version_key(s.labels.get("model_name", ""), s.labels.get("version", ""))
                    le = float(s.labels["le"])
                    per = buckets.setdefault(key, {})
                    per[le] = per.get(le, 0.0) + s.value
        elif family.name == LOAD_ATTEMPTS:
            for s in family.samples:
                if s.labels.get("status") == "success":
                    loads[s.labels.get("model_path", "")] = s.value
    versions = {}
    for key, (requests, errors) in counts.items():
        hist: Buckets = tuple(sorted(buckets.get(key, {}).items()))
        versions[key] = Counters(requests, errors, hist)
    return ServerScrape(versions, loads)


async def scrape(session: aiohttp.ClientSession, ip: str) -> ServerScrape | None:
    """One model server's metrics, or None when it does not answer (bounded in time and size)."""
    try:
        text = await metrics_text(session, ip, MAX_SCRAPE_BYTES, TIMEOUT)
        return parse_serving_metrics(text) if text is not None else None
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, KeyError) as e:
        log.debug("model server metrics unavailable", ip=ip, error=repr(e))
        return None


def _loaded_name(path: str) -> str:
    """A version directory as "model/version" (its last two components)."""
    parts = PurePath(path).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else path


@dataclass
class _Seen:
    """What the previous sample saw, to tell what changed."""

    t: float = 0.0
    nodes: dict[str, Counters] = field(default_factory=dict)
    models: dict[str, Counters] = field(default_factory=dict)
    upstreams: dict[str, Counters] = field(default_factory=dict)
    applied_version: str | None = None
    rejected_at: float | None = None
    model: str | None = None
    serving: set[str] | None = None
    synced_at: float | None = None
    loads: dict[tuple[str, str], float] = field(default_factory=dict)
    healthy: dict[str, bool] = field(default_factory=dict)
    sampled: bool = False


class Sampler:
    """The sampling task: `run` until cancelled."""

    def __init__(self, timeline: Timeline, status: Callable[[], dict[str, Any]],
                 admin_url: Callable[[], str | None], interval: Callable[[], float]):
        self.timeline = timeline
        self._status = status
        self._admin_url = admin_url
        self._interval = interval
        self._seen = _Seen()

    async def run(self) -> None:
        """Sample every interval until cancelled."""
        async with aiohttp.ClientSession(trust_env=False) as session:
            next_at = time.monotonic()
            while True:
                try:
                    await self.sample(session)
                except Exception:  # one bad sample must not end the charts
                    log.exception("timeline sample failed")
                interval = max(1.0, float(self._interval()))
                self.timeline.interval = interval
                next_at = max(next_at + interval, time.monotonic())
                await asyncio.sleep(next_at - time.monotonic())  # the sampling period, not a wait for a condition

    async def sample(self, session: aiohttp.ClientSession) -> None:
        """Take one sample: rates since the previous one, and events."""
        status = self._status()
        now = time.time()
        ips = [str(n.get("ip")) for n in status.get("serving_nodes") or [] if n.get("ip")][:MAX_NODES]
        results = await asyncio.gather(*(scrape(session, ip) for ip in ips))
        scrapes = {ip: r for ip, r in zip(ips, results) if r is not None}
        admin = self._admin_url()
        envoy = await envoy_clusters(session, admin) if admin else EnvoyView(reachable=False)

        nodes = {ip: total(s.versions.values()) for ip, s in scrapes.items()}
        models: dict[str, Counters] = {}
        for s in scrapes.values():
            for key, c in s.versions.items():
                models[key] = total([models[key], c]) if key in models else c
        upstreams: dict[str, Counters] = {}
        health: dict[str, bool] = {}
        for cluster in envoy.clusters:
            if cluster.name not in SERVING_CLUSTERS:
                continue
            for host in cluster.hosts:
                c = Counters(float(host.stats.get("rq_total", 0)), float(host.stats.get("rq_error", 0)))
                upstreams[host.address] = total([upstreams[host.address], c]) if host.address in upstreams else c
                health[host.address] = health.get(host.address, True) and host.health == "healthy"

        seen = self._seen
        if seen.sampled:
            seconds = now - seen.t
            self.timeline.add_point(Point(
                now,
                nodes=rates(nodes, seen.nodes, seconds),
                models=rates(models, seen.models, seconds),
                upstreams=rates(upstreams, seen.upstreams, seconds),
            ))
        self._events(status, scrapes, health, now)
        seen.t, seen.nodes, seen.models, seen.upstreams, seen.sampled = now, nodes, models, upstreams, True

    def _events(self, status: dict[str, Any], scrapes: dict[str, ServerScrape], health: dict[str, bool], now: float) -> None:
        seen, add = self._seen, self.timeline.add_event
        # By version: the same snapshot applied again (a switch in progress) is no new event.
        applied = (status.get("applied_version"), status.get("applied_at"))
        if applied[1] and applied[0] != seen.applied_version:
            add("applied", f"metadata {applied[0]} applied", applied[1])
            seen.applied_version = applied[0]
        rejection = status.get("last_rejection") or {}
        if rejection.get("at") and rejection.get("at") != seen.rejected_at:
            reasons = rejection.get("reasons") or [""]
            add("rejected", f"metadata {rejection.get('version')} rejected: {reasons[0]}", rejection["at"])
            seen.rejected_at = rejection["at"]
        model = (status.get("params") or {}).get("model.name")
        if model and seen.model is not None and model != seen.model:
            add("switched", f"model.name {seen.model} → {model}", applied[1] or now)
        if model:
            seen.model = model
        serving = {str(n.get("ip")) for n in status.get("serving_nodes") or [] if n.get("ip")}
        if seen.serving is not None and status.get("applied_at"):
            for ip in sorted(serving - seen.serving):
                add("node_added", f"serving node {ip} added", applied[1] or now)
            for ip in sorted(seen.serving - serving):
                add("node_removed", f"serving node {ip} removed", applied[1] or now)
        if status.get("applied_at"):
            seen.serving = serving
        synced = (status.get("model_sync") or {}).get("last_success_at")
        if synced and synced != seen.synced_at:
            add("synced", f"model sync of {(status.get('model_sync') or {}).get('model') or 'models'} done", synced)
            seen.synced_at = synced
        for ip, s in scrapes.items():
            for path, count in s.loads.items():
                if count > seen.loads.get((ip, path), 0):
                    add("loaded", f"{_loaded_name(path)} loaded on {ip}", now)
                    seen.loads[(ip, path)] = count
        for ip, ok in health.items():
            if seen.healthy.get(ip) and not ok:
                add("drained", f"{ip} stopped taking requests (draining or failing health checks)", now)
            seen.healthy[ip] = ok
        for ip in list(seen.healthy):
            if ip not in health:
                del seen.healthy[ip]

