"""Envoy's own views, read-only, behind the console's password: what the seed sent users
to `<node IP>:8001` for (clusters, the config dump, stats), while Envoy's admin API stays
on loopback, where nobody but the agent can reach its calls that change Envoy.

Only three GET paths are passed on, with their query parameters checked against a short
list; the config dump has every secret replaced before it leaves the node."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web

from agent import log as agent_log
from agent.clients.envoy_admin import AnswerTooLarge, fetch_raw
from agent.console.pages import CTX, SESSION

log = agent_log.get(__name__)

TIMEOUT = aiohttp.ClientTimeout(total=5.0, connect=1.0)
MAX_BODY = 16 * 1024 * 1024  # a config dump or stats of a large cluster; past it: 502
MAX_FILTER = 200  # characters of a stats filter (Envoy's RE2: linear time, but bounded input)
REDACTED = "[redacted]"
# Field names whose values are secrets wherever they appear in Envoy's config.
SECRET_FIELDS = frozenset({
    "private_key", "password", "secret", "hmac_secret", "session_ticket_keys", "generic_secret",
    "client_secret", "token", "api_key", "access_key", "secret_key", "secret_access_key", "key_password",
})
# Header names whose values are credentials (in header lists: {key|name, value}).
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key", "x-amz-security-token"})

# path on the console -> (Envoy admin path, allowed query parameters and their values; None = free text)
VIEWS: dict[str, tuple[str, dict[str, frozenset[str] | None]]] = {
    "clusters": ("/clusters", {"format": frozenset({"text", "json"})}),
    "config_dump": ("/config_dump", {"resource": None, "include_eds": frozenset({"", "true"})}),
    "stats": ("/stats", {"format": frozenset({"text", "json", "prometheus"}), "filter": None,
                         "usedonly": frozenset({""})}),
}

routes = web.RouteTableDef()


def redact(value: Any) -> Any:
    """A copy of a config dump with every secret replaced by REDACTED."""
    if isinstance(value, dict):
        out = {}
        header = str(value.get("key", value.get("name", ""))).lower()
        for key, item in value.items():
            if key in SECRET_FIELDS and item not in ("", None, {}, []):
                out[key] = REDACTED
            elif key == "value" and header in SECRET_HEADERS:
                out[key] = REDACTED
            else:
                out[key] = redact(item)
        return out
    if isinstance(value, list):
        return [redact(item) for item in value]
    if isinstance(value, str) and "PRIVATE KEY" in value:  # PEM key material under any name
        return REDACTED
    return value


def _query(request: web.Request, allowed: dict[str, frozenset[str] | None]) -> dict[str, str]:
    """The request's query parameters if every one is allowed; else a 400 naming it."""
    params: dict[str, str] = {}
    for key, value in request.query.items():
        if key not in allowed or key in params:
            raise web.HTTPBadRequest(text=f"400: query parameter {key[:40]!r} is not accepted here "
                                          f"(accepted: {', '.join(sorted(allowed)) or 'none'})")
        choices = allowed[key]
        if choices is not None and value not in choices:
            raise web.HTTPBadRequest(text=f"400: {key} must be one of {', '.join(sorted(c or '(empty)' for c in choices))}")
        if choices is None and (len(value) > MAX_FILTER or not value.isprintable()):
            raise web.HTTPBadRequest(text=f"400: {key} must be printable text of at most {MAX_FILTER} characters")
        params[key] = value
    return params


async def _fetch(request: web.Request, admin_path: str, params: dict[str, str]) -> tuple[int, bytes, str]:
    """GET an admin path on the node's Envoy: (status, body, content type); 502 when it fails."""
    url = request.app[CTX].envoy_admin_url.rstrip("/") + admin_path
    try:
        return await fetch_raw(request.app[SESSION], request.app[CTX].envoy_admin_url, admin_path, params,
                               MAX_BODY, TIMEOUT)
    except AnswerTooLarge as e:
        raise web.HTTPBadGateway(text=f"502: {e}") from None
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
        log.debug("envoy admin unreachable", url=url, error=repr(e))
        raise web.HTTPBadGateway(text=f"502: Envoy admin unreachable ({type(e).__name__})") from None


@routes.get("/envoy/{view}")
async def envoy_view(request: web.Request) -> web.Response:
    """One of Envoy's admin views, as Envoy answers it (the config dump with secrets redacted)."""
    view = request.match_info["view"]
    if view not in VIEWS:
        raise web.HTTPNotFound(text=f"404: Envoy views here: {', '.join(f'/envoy/{v}' for v in VIEWS)}")
    admin_path, allowed = VIEWS[view]
    status, body, content_type = await _fetch(request, admin_path, _query(request, allowed))
    if view == "config_dump" and status == 200:
        try:
            doc = json.loads(body)
        except ValueError:
            raise web.HTTPBadGateway(text="502: Envoy's config dump is not JSON") from None
        body = json.dumps(redact(doc), indent=1).encode()
        content_type = "application/json"
    if content_type not in ("application/json", "text/plain"):
        content_type = "text/plain"  # never let an upstream's HTML run under the console's origin
    return web.Response(status=status, body=body, content_type=content_type, charset="utf-8")


def setup(app: web.Application) -> None:
    """Add the Envoy view routes."""
    app.router.add_routes(routes)
