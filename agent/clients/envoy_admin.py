"""Client of Envoy's admin API (loopback only): readiness, server state, stats, the
clusters with their hosts' health, and the few calls that change Envoy (health-check
fail/ok, drain listeners). Every part of the agent, the console included, reads Envoy
through it.

A call that finds Envoy down or answering nonsense is reported as such
(`EnvoyView(reachable=False, error=...)`, False from `post`) where the caller shows it;
the raw reads (`stats`, `server_state`) raise aiohttp's errors, ValueError or TimeoutError.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from agent import log as agent_log
from agent.clients.http import describe, get_json
from agent.ports import envoy_admin_url

log = agent_log.get(__name__)


@dataclass
class EnvoyHost:
    """One upstream host of an Envoy cluster with its health as Envoy sees it."""

    address: str
    port: int
    hostname: str  # the node's instance id, as the endpoint names it
    health: str  # healthy, unhealthy, draining, degraded
    reasons: list[str]
    weight: int
    stats: dict[str, int]  # rq_total, rq_success, rq_error, cx_active, ...


@dataclass
class EnvoyCluster:
    """One Envoy cluster and its hosts."""

    name: str
    hosts: list[EnvoyHost]


@dataclass
class EnvoyView:
    """Envoy's clusters, or why they could not be read."""

    reachable: bool
    error: str = ""
    clusters: list[EnvoyCluster] = field(default_factory=list)


# Envoy health_status flags, as an operator would say them.
_HEALTH_FLAGS = {
    "failed_active_health_check": "failed active health check",
    "failed_outlier_check": "ejected as outlier",
    "failed_eds_health": "unhealthy in endpoint discovery",
    "pending_dynamic_removal": "being removed",
    "pending_active_hc": "waiting for first health check",
    "excluded_via_immediate_hc_fail": "failing health checks on purpose (draining)",
    "active_hc_timeout": "health check timed out",
}


def _host(raw: dict[str, Any]) -> EnvoyHost:
    sock = (raw.get("address") or {}).get("socket_address") or {}
    hs = raw.get("health_status") or {}
    reasons = [label for flag, label in _HEALTH_FLAGS.items() if hs.get(flag)]
    eds = str(hs.get("eds_health_status", "HEALTHY"))
    if eds in ("DRAINING",) or hs.get("excluded_via_immediate_hc_fail"):
        health = "draining"
    elif eds in ("UNHEALTHY", "TIMEOUT") or any(
        hs.get(f) for f in ("failed_active_health_check", "failed_outlier_check", "failed_eds_health", "active_hc_timeout")
    ):
        health = "unhealthy"
    elif eds == "DEGRADED":
        health = "degraded"
    elif hs.get("pending_active_hc"):
        health = "unhealthy"  # Envoy sends it nothing until the first check passes
    else:
        health = "healthy"
    if eds not in ("HEALTHY", "UNKNOWN"):
        reasons.insert(0, f"EDS status {eds}")
    stats = {}
    for s in raw.get("stats") or []:
        try:
            stats[str(s.get("name"))] = int(s.get("value", 0))
        except (TypeError, ValueError):
            continue
    return EnvoyHost(
        address=str(sock.get("address", "")),
        port=int(sock.get("port_value", 0) or 0),
        hostname=str(raw.get("hostname", "")),
        health=health,
        reasons=reasons,
        weight=int(raw.get("weight", 1) or 1),
        stats=stats,
    )


async def envoy_clusters(session: aiohttp.ClientSession, admin_url: str) -> EnvoyView:
    """GET {admin_url}/clusters?format=json: every cluster's hosts and their health."""
    url = f"{admin_url.rstrip('/')}/clusters?format=json"
    try:
        status, body = await get_json(session, url)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, OSError) as e:
        log.debug("envoy admin unreachable", url=url, error=describe(e))
        return EnvoyView(reachable=False, error=f"{url}: {describe(e)}")
    if status != 200 or not isinstance(body, dict):
        return EnvoyView(reachable=False, error=f"{url}: unexpected HTTP {status}")
    clusters = []
    for c in body.get("cluster_statuses") or []:
        try:
            hosts = [_host(h) for h in c.get("host_statuses") or []]
        except (TypeError, ValueError, AttributeError) as e:
            return EnvoyView(reachable=False, error=f"{url}: unreadable cluster {c.get('name')!r}: {e}")
        clusters.append(EnvoyCluster(name=str(c.get("name", "")), hosts=hosts))
    clusters.sort(key=lambda c: c.name)
    return EnvoyView(reachable=True, clusters=clusters)


class AnswerTooLarge(ValueError):
    """Envoy's answer is larger than the caller's bound."""


async def fetch_raw(session: aiohttp.ClientSession, admin_url: str, path: str, params: dict[str, str],
                    max_body: int, timeout: aiohttp.ClientTimeout) -> tuple[int, bytes, str]:
    """GET an admin path as Envoy answers it: (status, body, content type). The body is
    read in chunks and refused past `max_body` (AnswerTooLarge); aiohttp's errors,
    TimeoutError and OSError are the caller's to report."""
    url = admin_url.rstrip("/") + path
    async with session.get(url, params=params, timeout=timeout, allow_redirects=False) as resp:
        chunks, size = [], 0
        async for chunk in resp.content.iter_chunked(256 * 1024):  # read() may stop at any chunk
            size += len(chunk)
            if size > max_body:
                raise AnswerTooLarge(f"Envoy's answer is larger than {max_body} bytes")
            chunks.append(chunk)
        return resp.status, b"".join(chunks), resp.content_type


class EnvoyAdmin:
    """Client of one Envoy's admin API."""

    def __init__(self, base_url: str, timeout: float = 2.0):
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    @classmethod
    def of_node(cls, node_ip: str, timeout: float = 2.0) -> "EnvoyAdmin":
        """The admin API of the Envoy of the node at `node_ip` (this node's: loopback)."""
        return cls(envoy_admin_url(node_ip), timeout)

    async def _get(self, path: str, **params: str) -> tuple[int, str]:
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            async with session.get(f"{self.base_url}{path}", params=params) as resp:
                return resp.status, await resp.text()

    async def ready(self) -> bool:
        """True when Envoy reports LIVE on /ready."""
        try:
            status, _ = await self._get("/ready")
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False
        return status == 200

    async def server_state(self) -> str:
        """Envoy's server state from /server_info: LIVE, or DRAINING after /healthcheck/fail."""
        _, text = await self._get("/server_info")
        return str(json.loads(text).get("state", ""))

    async def stats(self, pattern: str) -> dict[str, Any]:
        """Stats (counters, gauges, text readouts) whose names match the regex `pattern`."""
        _, text = await self._get("/stats", filter=pattern, format="json")
        out: dict[str, Any] = {}
        for item in json.loads(text).get("stats", []):
            if "name" in item:
                out[item["name"]] = item.get("value")
        return out

    async def stats_with_quantiles(self, pattern: str) -> tuple[dict[str, int], dict[str, dict[float, float]]]:
        """Counters and histogram quantiles (of the last flush interval, else cumulative)
        whose names match the regex `pattern`, from one call."""
        _, text = await self._get("/stats", filter=pattern, format="json")
        counters: dict[str, int] = {}
        quantiles: dict[str, dict[float, float]] = {}
        for item in json.loads(text).get("stats", []):
            if "name" in item:
                counters[item["name"]] = int(item.get("value") or 0)
            for hist in (item.get("histograms") or {}).get("computed_quantiles", []):
                supported = item["histograms"]["supported_quantiles"]
                values = {}
                for q, v in zip(supported, hist.get("values", [])):
                    # The last flush interval describes now; an interval with no request has none.
                    value = v.get("interval")
                    values[float(q)] = float(value if value is not None else v.get("cumulative") or 0)
                quantiles[hist["name"]] = values
        return counters, quantiles

    async def clusters(self) -> dict[str, Any]:
        """The /clusters view as JSON (hosts and their health flags)."""
        _, text = await self._get("/clusters", format="json")
        return json.loads(text)

    async def cluster_view(self) -> EnvoyView:
        """Every cluster's hosts and their health, or why they could not be read."""
        async with aiohttp.ClientSession() as session:
            return await envoy_clusters(session, self.base_url)

    async def rejections(self) -> tuple[int, int]:
        """Envoy's counts of rejected listener and cluster updates."""
        try:
            stats = await self.stats(r"^(listener_manager\.lds|cluster_manager\.cds)\.update_rejected$")
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return (0, 0)
        return (stats.get("listener_manager.lds.update_rejected", 0), stats.get("cluster_manager.cds.update_rejected", 0))

    async def post(self, path: str) -> bool:
        """POST an admin command (e.g. /healthcheck/fail); False when Envoy did not take it."""
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
                async with s.post(f"{self.base_url}{path}") as resp:
                    return resp.status == 200
        except (aiohttp.ClientError, TimeoutError) as e:
            log.warning("envoy.admin_unreachable", path=path, error=str(e) or type(e).__name__)
            return False
