"""The platform's monitor: one JSON object of this node's figures, answered at once.

Request counts and latencies come from this node's Envoy (its public listeners, stat
prefixes `rest` and `grpc`), so they describe what the clients of this node saw. Rates
and CPU use need two readings: a sampler task reads them every SAMPLE_INTERVAL seconds,
so a monitor call costs a few local requests and never waits for a sample.

`ITEMS` is the single definition of every item (unit, type, statistics, display scale):
platform/cluster.json.mustache carries the same definitions (a test keeps them equal).
The platform takes integers only, so fractional figures are sent multiplied by 100 and
declared with `scale_factor_when_display: 0.01`.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass
from typing import Any, Awaitable

import aiohttp
import psutil

from agent import log
from agent.clients.envoy_admin import EnvoyAdmin
from agent.clients.model_server import model_state
from agent.nodeops.health import HealthReport
from agent.nodeops.view import NodeView
from agent.ports import LISTENER_KINDS
from agent.processes.held import NodeProcesses
from agent.processes.names import ENVOY, MODEL_SERVER
from agent.state import Role

logger = log.get(__name__)

SAMPLE_INTERVAL = 2.0
RATE_WINDOW = 30.0
ENVOY_TIMEOUT = 1.0
STAT_PREFIXES = tuple(LISTENER_KINDS)


@dataclass(frozen=True)
class MonitorItem:
    """One monitor item as the platform's cluster.json declares it."""

    name: str
    unit: str
    statistics_type: str  # avg, delta, latest, max, ...
    value_type: str = "int"
    scale_factor_when_display: float = 1

    def definition(self) -> dict[str, Any]:
        """The item's entry under `monitor.items` in cluster.json."""
        out: dict[str, Any] = {"unit": self.unit, "value_type": self.value_type, "statistics_type": self.statistics_type}
        if self.scale_factor_when_display != 1:
            out["scale_factor_when_display"] = self.scale_factor_when_display
        return out


ITEMS: tuple[MonitorItem, ...] = (
    MonitorItem("agent_up", "", "latest"),
    MonitorItem("healthy", "", "latest"),
    MonitorItem("requests_per_second", "req/s", "avg", scale_factor_when_display=0.01),
    MonitorItem("requests_2xx", "", "delta"),
    MonitorItem("requests_4xx", "", "delta"),
    MonitorItem("requests_5xx", "", "delta"),
    MonitorItem("latency_p50", "ms", "avg", scale_factor_when_display=0.01),
    MonitorItem("latency_p99", "ms", "max", scale_factor_when_display=0.01),
    MonitorItem("cpu_usage", "%", "avg", scale_factor_when_display=0.01),
    MonitorItem("memory_usage", "%", "avg", scale_factor_when_display=0.01),
    MonitorItem("model_server_memory", "MiB", "avg"),
    MonitorItem("envoy_memory", "MiB", "avg"),
    MonitorItem("loaded_models", "", "latest"),
    MonitorItem("model_available", "", "latest"),
    MonitorItem("metadata_lag", "s", "max"),
    MonitorItem("model_sync_lag", "s", "max"),
    # 1 while the model_repo node's MinIO answers its liveness probe; 0 on other nodes.
    MonitorItem("minio_up", "", "latest"),
)
GROUPS = {
    "requests": ["requests_2xx", "requests_4xx", "requests_5xx"],
    "latency": ["latency_p50", "latency_p99"],
    "resources": ["cpu_usage", "memory_usage"],
    "process_memory": ["model_server_memory", "envoy_memory"],
    "lag": ["metadata_lag", "model_sync_lag"],
}
DISPLAY = ["requests_per_second", "requests", "latency", "resources", "process_memory",
           "loaded_models", "model_available", "lag", "healthy", "minio_up"]
ALARM = ["healthy", "model_available", "requests_5xx", "latency_p99", "cpu_usage", "memory_usage", "metadata_lag"]


def cluster_json_section(cmd: str) -> dict[str, Any]:
    """The `monitor` section of a node role in cluster.json, for the hook at `cmd`."""
    return {
        "enable": True,
        "cmd": cmd,
        "items": {item.name: item.definition() for item in ITEMS},
        "groups": GROUPS,
        "display": DISPLAY,
        "alarm": ALARM,
    }


def _scaled(value: float) -> int:
    return int(round(value * 100))


class Sampler:
    """Readings that need a previous reading: Envoy's request total (for a rate) and the
    machine's CPU use. Its task runs until cancelled."""

    def __init__(self, view: NodeView | None):
        self.view = view
        self._totals: collections.deque[tuple[float, int]] = collections.deque()
        self.cpu_percent = 0.0

    def requests_per_second(self) -> float:
        """Requests per second over the last RATE_WINDOW seconds (0 before two readings)."""
        if len(self._totals) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._totals[0], self._totals[-1]
        return max(0.0, (n1 - n0) / (t1 - t0)) if t1 > t0 else 0.0

    def record(self, now: float, total: int) -> None:
        """Add one reading of Envoy's request total."""
        # A restarted Envoy counts from zero again: no rate across the restart.
        if self._totals and total < self._totals[-1][1]:
            self._totals.clear()
        self._totals.append((now, total))
        while self._totals and now - self._totals[0][0] > RATE_WINDOW:
            self._totals.popleft()

    async def run(self) -> None:
        """Sample every SAMPLE_INTERVAL seconds until cancelled."""
        psutil.cpu_percent(None)  # the first call only starts the measurement
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL)
            self.cpu_percent = psutil.cpu_percent(None)
            admin = self.view.admin() if self.view is not None else None
            if admin is None:
                continue
            try:
                stats = await admin.stats(_TOTAL_PATTERN)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue
            self.record(time.monotonic(), sum(int(v or 0) for v in stats.values()))


_TOTAL_PATTERN = r"^http\.(rest|grpc)\.downstream_rq_total$"
_STATS_PATTERN = r"^http\.(rest|grpc)\.downstream_rq_(2xx|4xx|5xx|time)$"


def _rss_mib(pid: int | None) -> int:
    """Resident memory of a process and its children, in MiB (0 when not running)."""
    if pid is None:
        return 0
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs) // (1024 * 1024)
    except psutil.Error:
        return 0


def _sync_lag(sync_status: dict[str, Any], since: float, now: float) -> int:
    """Seconds since the model store sync last succeeded (since `since` when it never
    did); 0 when models are on local disk (s3.type none)."""
    if sync_status.get("state", "disabled") == "disabled":
        return 0
    last = sync_status.get("last_success_at")
    return max(0, int(now - (last if isinstance(last, (int, float)) else since)))


async def collect(view: NodeView, processes: NodeProcesses | None, sampler: Sampler,
                  health_check: Awaitable[HealthReport]) -> dict[str, int]:
    """Every monitor item's current value; `health_check` runs alongside the readings."""
    now = time.time()
    state = view.state()
    status = view.agent_status
    values: dict[str, int] = {item.name: 0 for item in ITEMS}
    values["agent_up"] = 1
    values["requests_per_second"] = _scaled(sampler.requests_per_second())
    values["cpu_usage"] = _scaled(sampler.cpu_percent)
    values["memory_usage"] = _scaled(psutil.virtual_memory().percent)
    if processes is not None:
        values["model_server_memory"] = _rss_mib(processes.pid(MODEL_SERVER))
        values["envoy_memory"] = _rss_mib(processes.pid(ENVOY))
    if not status.up_to_date and status.received_at:
        values["metadata_lag"] = int(now - status.received_at)
    values["model_sync_lag"] = _sync_lag(view.sync_status(), status.started_at, now)
    if state is None:
        values["healthy"] = int((await health_check).healthy)
        return values

    serving = state.me.role is Role.MODEL_SERVING
    models = view.serving_models() if serving else ()
    report, envoy, *model_states = await asyncio.gather(
        health_check,
        EnvoyAdmin.of_node(state.me.ip, timeout=ENVOY_TIMEOUT).stats_with_quantiles(_STATS_PATTERN),
        *(model_state(state.me.ip, m) for m in models),
        return_exceptions=True,
    )
    values["healthy"] = int(not isinstance(report, BaseException) and report.healthy)
    values["minio_up"] = int(not isinstance(report, BaseException) and report.minio_live is True)
    if isinstance(envoy, BaseException):
        logger.debug("monitor.envoy_unreachable", error=str(envoy) or type(envoy).__name__)
    else:
        counters, quantiles = envoy
        for cls in ("2xx", "4xx", "5xx"):
            values[f"requests_{cls}"] = sum(counters.get(f"http.{p}.downstream_rq_{cls}", 0) for p in STAT_PREFIXES)
        # The REST listener carries most traffic; fall back to gRPC when REST saw none.
        for prefix in STAT_PREFIXES:
            q = quantiles.get(f"http.{prefix}.downstream_rq_time")
            if q and (q.get(50.0) or q.get(99.0)):
                values["latency_p50"] = _scaled(q.get(50.0, 0.0))
                values["latency_p99"] = _scaled(q.get(99.0, 0.0))
                break
    by_name = dict(zip(models, model_states))
    values["loaded_models"] = sum(1 for s in model_states if s is True)
    # Every model of model.name AVAILABLE here (one model or several).
    values["model_available"] = int(all(by_name.get(m) is True for m in state.params.model_names))
    return values
