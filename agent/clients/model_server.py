"""Client of a model server (TF Serving, or the built-in server that speaks its API):
its REST status of a model, and its admin call HandleReloadConfigRequest, so a changed
models.config reaches the server at once instead of on its next poll.

Status calls use short timeouts; a server that is down or answers nonsense is reported
as such (`reachable=False`, `error=...`, or None from `model_state`), never raised.

The built-in server serves the reload only on its local admin socket (mode 0600) and
refuses it on the network ports. TF Serving has no such switch: it serves the call on
its gRPC port to anyone who reaches it, so for the `tfserving` backend the agent calls
the node's own gRPC port, and only the network around the node (Envoy routes only the
public API; 8500 reachable from the cluster's nodes alone) can keep others out."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp

from agent import log as agent_log
from agent.clients.http import TIMEOUT, describe, get_json
from agent.ports import model_server_url

log = agent_log.get(__name__)


@dataclass
class VersionState:
    """One model version as the model server reports it."""

    version: str
    state: str  # START, LOADING, AVAILABLE, UNLOADING, END
    error_code: str = "OK"
    error_message: str = ""
    runtime: str = ""  # the built-in server's runtime and precision of a loaded version
    precision: str = ""
    requests: int = 0  # inference requests it served (built-in server)


@dataclass
class ModelServerView:
    """The model server's answer for one model name."""

    name: str
    reachable: bool
    error: str = ""  # why the model server could not be asked, or what it answered instead
    loaded: bool = False  # the server knows the model
    versions: list[VersionState] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)  # version labels (built-in server)
    canary_percent: int = 0  # unversioned requests sent to the `canary` label


async def model_status(session: aiohttp.ClientSession, base_url: str, name: str) -> ModelServerView:
    """GET {base_url}/v1/models/{name}: the state of each version of one model."""
    url = f"{base_url.rstrip('/')}/v1/models/{name}"
    try:
        status, body = await get_json(session, url)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, OSError) as e:
        log.debug("model server unreachable", url=url, error=describe(e))
        return ModelServerView(name=name, reachable=False, error=f"{url}: {describe(e)}")
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
    view = ModelServerView(name=name, reachable=True, loaded=True, versions=versions)
    await _add_runtimes(session, base_url, view)
    return view


async def _add_runtimes(session: aiohttp.ClientSession, base_url: str, view: ModelServerView) -> None:
    """Runtime, precision and requests served per loaded version, the labels and the
    canary share, from the built-in server (TF Serving has no such call)."""
    versions = view.versions
    url = f"{base_url.rstrip('/')}/v1/models/{view.name}/runtime"
    try:
        status, body = await get_json(session, url)
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
            version.requests = _int(found.get("requests"))
    labels = body.get("labels")
    if isinstance(labels, dict):
        view.labels = {str(k)[:64]: _int(v) for k, v in list(labels.items())[:64]}
    view.canary_percent = _int(body.get("canary_percent"))


def _int(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


METRICS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's Prometheus path


async def metrics_text(session: aiohttp.ClientSession, ip: str, max_bytes: int,
                       timeout: aiohttp.ClientTimeout = TIMEOUT) -> str | None:
    """The Prometheus text of the model server on `ip`, or None when it does not answer
    200 within `timeout` or its answer passes `max_bytes`; aiohttp's errors, TimeoutError
    and OSError are the caller's to report."""
    url = f"{model_server_url(ip)}{METRICS_PATH}"
    async with session.get(url, timeout=timeout, allow_redirects=False) as resp:
        if resp.status != 200:
            return None
        chunks, size = [], 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > max_bytes:
                return None
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


async def model_state(ip: str, name: str, timeout: float = 1.0) -> bool | None:
    """Whether the model server on `ip` reports a version of `name` AVAILABLE; None
    when the server does not answer at all (a dead node does not hold a switch up)."""
    url = f"{model_server_url(ip)}/v1/models/{name}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.get(url) as resp:
                body = await resp.json(content_type=None) if resp.status == 200 else {}
    except (aiohttp.ClientError, TimeoutError):
        return None
    except ValueError:
        return False
    return any(v.get("state") == "AVAILABLE" for v in body.get("model_version_status", []))


async def model_available(ip: str, name: str) -> bool:
    """True when the model server on `ip` reports a version of `name` AVAILABLE."""
    return bool(await model_state(ip, name))


class ReloadFailed(Exception):
    """The model server did not take the config; the message says why."""


def reload_request(config_text: str):
    """A ReloadConfigRequest carrying the text-format models.config `config_text`."""
    # gRPC and the protos load only for a reload: the status readers (console, health,
    # monitor) stay light.
    from google.protobuf import text_format

    from agent.serving.protos import model_management_pb2

    request = model_management_pb2.ReloadConfigRequest()
    try:
        text_format.Parse(config_text, request.config)
    except text_format.ParseError as e:
        raise ReloadFailed(f"models.config is not a ModelServerConfig: {e}") from None
    return request


async def reload_config(target: str, config_text: str, timeout: float) -> None:
    """Ask the model server at `target` (`unix:/path` or `host:port`) to serve
    `config_text` now; returns once it answered OK (its new models are loaded)."""
    import grpc

    from agent.serving.protos import model_service_pb2_grpc

    request = reload_request(config_text)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        try:
            response = await stub.HandleReloadConfigRequest(request, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise ReloadFailed(f"{target}: {e.code().name}: {e.details()}") from None
    if response.status.error_code != 0:
        raise ReloadFailed(f"{target}: error {response.status.error_code}: {response.status.error_message}")
