"""Read-only views of the node's model server (TF Serving status API) and Envoy (admin API).

Both are asked with short timeouts; one that is down or answers nonsense is reported as
such (`reachable=False`, `error=...`), never raised to the page.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from agent import log as agent_log

log = agent_log.get(__name__)

TIMEOUT = aiohttp.ClientTimeout(total=2.0, connect=1.0)
MAX_BODY = 4 * 1024 * 1024  # Envoy's cluster dump for hundreds of nodes fits easily


@dataclass
class VersionState:
    """One model version as the model server reports it."""

    version: str
    state: str  # START, LOADING, AVAILABLE, UNLOADING, END
    error_code: str = "OK"
    error_message: str = ""
    runtime: str = ""  # the built-in server's runtime and precision of a loaded version
    precision: str = ""


@dataclass
class ModelServerView:
    """The model server's answer for one model name."""

    name: str
    reachable: bool
    error: str = ""  # why the model server could not be asked, or what it answered instead
    loaded: bool = False  # the server knows the model
    versions: list[VersionState] = field(default_factory=list)


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


async def _get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    """GET `url` and parse its JSON body (bounded in size)."""
    async with session.get(url, timeout=TIMEOUT, allow_redirects=False) as resp:
        body = await resp.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            raise ValueError(f"answer larger than {MAX_BODY} bytes")
        return resp.status, json.loads(body) if body else None


def _describe(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"cannot connect ({e.os_error.strerror or e.os_error})"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


async def model_status(session: aiohttp.ClientSession, base_url: str, name: str) -> ModelServerView:
    """GET {base_url}/v1/models/{name}: the state of each version of one model."""
    url = f"{base_url.rstrip('/')}/v1/models/{name}"
    try:
        status, body = await _get_json(session, url)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, OSError) as e:
        log.debug("model server unreachable", url=url, error=_describe(e))
        return ModelServerView(name=name, reachable=False, error=f"{url}: {_describe(e)}")
    if status == 404 or (isinstance(body, dict) and "error" in body and status >= 400):
        message = body.get("error", "") if isinstance(body, dict) else ""
        return ModelServerView(name=name, reachable=True, loaded=False, error=str(message) or "not loaded")
    if status != 200 or not isinstance(body, dict):
        return ModelServerView(name=name, reachable=True, error=f"{url}: unexpected HTTP {status}")
    versions = []
    for item in body.get("model_version_status") or []:
        st = item.get("status") or {}
        versions.append(
            VersionState(
                version=str(item.get("version", "")),
                state=str(item.get("state", "UNKNOWN")),
                error_code=str(st.get("error_code", "OK")),
                error_message=str(st.get("error_message", "")),
            )
        )
    await _add_runtimes(session, base_url, name, versions)
    return ModelServerView(name=name, reachable=True, loaded=True, versions=versions)


async def _add_runtimes(session: aiohttp.ClientSession, base_url: str, name: str, versions: list[VersionState]) -> None:
    """Runtime and precision per loaded version from the built-in server (TF Serving has no such call)."""
    url = f"{base_url.rstrip('/')}/v1/models/{name}/runtime"
    try:
        status, body = await _get_json(session, url)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, OSError):
        return
    if status != 200 or not isinstance(body, dict):
        return
    by_version = {str(v.get("version")): v for v in body.get("versions") or [] if isinstance(v, dict)}
    for version in versions:
        found = by_version.get(version.version)
        if found:
            version.runtime = str(found.get("runtime", ""))
            version.precision = str(found.get("precision", ""))


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
        status, body = await _get_json(session, url)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, OSError) as e:
        log.debug("envoy admin unreachable", url=url, error=_describe(e))
        return EnvoyView(reachable=False, error=f"{url}: {_describe(e)}")
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
