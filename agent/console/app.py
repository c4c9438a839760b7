"""The web console's aiohttp application: routes, password, security headers, lifecycle."""

from __future__ import annotations

import asyncio
import ssl
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from agent import log as agent_log
from agent.console import charts, cluster, envoy_views, logs, models
from agent import limits
from agent.console.auth import challenge, credentials_ok
from agent.console.context import ConsoleContext
from agent.console.guard import ConnectionGuard, GuardedSite, LoginThrottle, allowed_hosts, host_check, mark_request
from agent.console.pages import CLOSING, CTX, EXECUTOR, JINJA, SESSION, STATIC, make_jinja
from agent.ports import CONSOLE_PORT

log = agent_log.get(__name__)

# Pages use only their own scripts and styles: no inline code, no framing, no plugins.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
EXECUTOR_THREADS = 4
MAX_REQUEST_BODY = 16 * 1024  # the console accepts no uploads
# The classic text format, which every Prometheus version scrapes (generate_latest writes it).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
THROTTLE = web.AppKey("login_throttle", LoginThrottle)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An unexpected error is logged with its context and answered 500 without detail."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception("console request failed", method=request.method, path=request.path)
        return web.Response(status=500, text="500: internal error (see the agent's log)")


@web.middleware
async def _password(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every route, static files and errors included, is behind web.password when it is set.
    A client's failed logins are logged (address, never the password) and slow it down."""
    password = request.app[CTX].password()
    header = request.headers.get("Authorization")
    if not password:
        return await handler(request)
    if header is None:  # a browser's first request: not an attempt
        raise challenge()
    throttle, client = request.app[THROTTLE], request.remote or "-"
    wait = throttle.wait(client)
    if wait > 0:
        return web.Response(status=429, text="429: too many failed logins, try again later",
                            headers={"Retry-After": str(max(1, round(wait)))})
    if not credentials_ok(header, password):
        failures = throttle.failed(client)
        log.warning("console.login_failed", client=client, failures=failures,
                    retry_after_seconds=round(throttle.wait(client), 1))
        raise challenge()
    throttle.succeeded(client)
    return await handler(request)


async def _security_headers(_request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Cache-Control", "no-store")


async def _executor(app: web.Application) -> AsyncIterator[None]:
    """Threads for the console's file work: a few, so big scans queue instead of piling up."""
    app[EXECUTOR] = ThreadPoolExecutor(max_workers=EXECUTOR_THREADS, thread_name_prefix="console")
    yield
    app[EXECUTOR].shutdown(wait=False, cancel_futures=True)


async def _http_session(app: web.Application) -> AsyncIterator[None]:
    """One client session for the model server and Envoy admin calls; no proxies from the environment."""
    async with aiohttp.ClientSession(trust_env=False) as session:
        app[SESSION] = session
        yield


async def _stop_streams(app: web.Application) -> None:
    """End every live stream so shutdown does not wait for browsers to leave."""
    app[CLOSING].set()


async def _metrics(request: web.Request) -> web.Response:
    """The agent's metrics in Prometheus text format."""
    try:
        await models.refresh_runtime_metrics(request.app)
    except Exception:  # the agent's own metrics are served even when the model view fails
        log.exception("model runtime metrics not refreshed")
    body = request.app[CTX].metrics.render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


def create_app(ctx: ConsoleContext, hosts: frozenset[str] | None = None) -> web.Application:
    """The console application for one agent (read-only: GET and HEAD routes only).
    `hosts`: the Host names it answers to (None: any, for tests of the pages alone)."""
    middlewares = [mark_request] + ([host_check(hosts)] if hosts is not None else []) + [_errors, _password]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_REQUEST_BODY)
    app[CTX] = ctx
    app[THROTTLE] = LoginThrottle()
    app[JINJA] = make_jinja()
    app[CLOSING] = asyncio.Event()
    app.cleanup_ctx.append(_executor)
    app.cleanup_ctx.append(_http_session)
    app.on_shutdown.append(_stop_streams)
    app.on_response_prepare.append(_security_headers)
    cluster.setup(app)
    logs.setup(app)
    models.setup(app)
    envoy_views.setup(app)
    charts.setup(app)
    app.router.add_get("/metrics", _metrics)
    app.router.add_static("/static/", STATIC, follow_symlinks=False, show_index=False)
    return app


async def start_console(ctx: ConsoleContext, host: str, port: int = CONSOLE_PORT,
                        ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
    """Serve the console on host:port (HTTPS with `ssl_context`); the caller owns the runner."""
    runner = web.AppRunner(create_app(ctx, allowed_hosts(host)), access_log=None, shutdown_timeout=2.0,
                           keepalive_timeout=limits.CONSOLE_IDLE_TIMEOUT)
    await runner.setup()
    try:
        await GuardedSite(runner, host, port, ConnectionGuard(), ssl_context=ssl_context).start()
    except OSError:
        await runner.cleanup()
        raise
    scheme = "https" if ssl_context else "http"
    log.info("console listening", url=f"{scheme}://{host}:{port}/", protected=bool(ctx.password()))
    return runner
