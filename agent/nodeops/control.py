"""The control API: HTTP over a unix socket (mode 0600) for `status`, the lifecycle
hooks and tests. Only the agent's own user can reach it.

    GET  /status              the agent's status, with the lifecycle's (stopped, draining)
    GET  /health              health report (agent/nodeops/health.py), for the metadata the
                              source holds now (`?catch_up=s` bounds that wait)
    POST /health/repair       restart what is broken; returns what was restarted
    GET  /monitor             the monitor items (agent/nodeops/monitor.py)
    POST /drain               {"timeout": s}: fail health checks, wait for in-flight requests
    POST /undrain             pass health checks again
    POST /services/stop       {"drain_timeout": s}: drain, stop the node's processes, hold them down
    POST /services/start      release the hold and start what the plan wants
    GET  /scale/in/check      the scale-in pre-check         -> {"code", "message"}
    POST /scale/in            {"timeout": s}: scale-in on a remaining node
    POST /scale/out           {"timeout": s}: scale-out on an existing node

Scale answers carry `code`: 0, or the hook exit code of the refusal (agent/nodeops/scaling.py).
Every answer that depends on the cluster (health, repair, scale) first brings the agent
up to date with its metadata source (`NodeView.catch_up`): the platform calls a hook right
after writing metadata, and the answer must be for that write, not the one before.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aiohttp import web

from agent import log
from agent.nodeops import health, monitor
from agent.nodeops.lifecycle import Lifecycle
from agent.nodeops.scaling import Verdict
from agent.nodeops.view import NodeView

logger = log.get(__name__)

MAX_TIMEOUT = 86400.0
# /health waits at most this long for the agent to apply what the source holds now; the
# health-check hook has 8 s in all. Past it, the report says the metadata is not applied.
HEALTH_CATCH_UP = 4.0


class BadRequest(ValueError):
    """A request the control API refuses (400)."""


def _seconds(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_TIMEOUT:
        raise BadRequest(f"{key} must be a number of seconds in (0, {MAX_TIMEOUT:.0f}], got {value!r}")
    return float(value)


def _query_seconds(request: web.Request, key: str, default: float) -> float:
    raw = request.query.get(key)
    try:
        return _seconds({key: float(raw)} if raw is not None else {}, key, default)
    except ValueError as e:
        raise BadRequest(f"{key} must be a number of seconds, got {raw!r}") from e


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _verdict(v: Verdict) -> web.Response:
    return web.json_response({"code": int(v.code), "message": v.message})


def create_control_app(view: NodeView, lifecycle: Lifecycle, sampler: monitor.Sampler) -> web.Application:
    """The control API's routes for the node `view` shows; `sampler` is the monitor's
    (its task is the Agent's)."""
    app = web.Application(middlewares=[_errors])
    routes = web.RouteTableDef()

    @routes.get("/status")
    async def get_status(_request: web.Request) -> web.Response:
        return web.json_response({**view.status(), "lifecycle": lifecycle.status()})

    async def checked(request: web.Request) -> "health.HealthReport":
        problem = await view.catch_up(_query_seconds(request, "catch_up", HEALTH_CATCH_UP))
        return await health.check(view, lifecycle, extra=problem)

    @routes.get("/health")
    async def get_health(request: web.Request) -> web.Response:
        return web.json_response((await checked(request)).to_dict())

    @routes.post("/health/repair")
    async def post_repair(request: web.Request) -> web.Response:
        report = await checked(request)
        restarted = await health.repair(lifecycle, report)
        return web.json_response({"restarted": restarted, "before": report.to_dict()})

    @routes.get("/monitor")
    async def get_monitor(_request: web.Request) -> web.Response:
        return web.json_response(await monitor.collect(view, lifecycle.processes, sampler, health.check(view, lifecycle)))

    @routes.post("/drain")
    async def post_drain(request: web.Request) -> web.Response:
        timeout = _seconds(await _body(request), "timeout", 30.0)
        return web.json_response(asdict(await lifecycle.drainer.drain(timeout)))

    @routes.post("/undrain")
    async def post_undrain(_request: web.Request) -> web.Response:
        await lifecycle.drainer.undrain()
        return web.json_response(lifecycle.status())

    @routes.post("/services/stop")
    async def post_stop(request: web.Request) -> web.Response:
        timeout = _seconds(await _body(request), "drain_timeout", 30.0)
        return web.json_response(await lifecycle.services.stop_services(timeout))

    @routes.post("/services/start")
    async def post_start(_request: web.Request) -> web.Response:
        await lifecycle.services.start_services()
        return web.json_response(lifecycle.status())

    @routes.get("/scale/in/check")
    async def get_scale_in_check(request: web.Request) -> web.Response:
        return _verdict(await lifecycle.scaling.scale_in_check(_query_seconds(request, "timeout", 10.0)))

    @routes.post("/scale/in")
    async def post_scale_in(request: web.Request) -> web.Response:
        return _verdict(await lifecycle.scaling.scale_in(_seconds(await _body(request), "timeout", 60.0)))

    @routes.post("/scale/out")
    async def post_scale_out(request: web.Request) -> web.Response:
        return _verdict(await lifecycle.scaling.scale_out(_seconds(await _body(request), "timeout", 300.0)))

    app.add_routes(routes)
    return app


@web.middleware
async def _errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as e:
        return web.json_response({"error": str(e)}, status=400)


async def start_control(app: web.Application, path: Path) -> web.AppRunner:
    """Serve `app` on the unix socket `path`; the caller cleans the runner up. Tells
    systemd the agent is ready once the socket answers (Type=notify)."""
    path.unlink(missing_ok=True)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    # Create the socket with no permissions for others from the first instant.
    old = os.umask(0o177)
    try:
        await web.UnixSite(runner, str(path)).start()
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    from agent.processes.systemd import notify

    notify("READY=1")
    return runner
