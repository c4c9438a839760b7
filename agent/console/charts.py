"""The live charts' data: the agent's timeline (agent/console/timeline.py) as columns, for the
Cluster and Models pages' scripts (static/charts.js) to draw with the vendored uPlot."""

from __future__ import annotations

import math

import orjson
from aiohttp import web

from agent.console.pages import CTX

routes = web.RouteTableDef()


@routes.get("/api/timeline")
async def timeline_api(request: web.Request) -> web.Response:
    """Samples and events after `since` (a Unix time; default: the whole window)."""
    timeline = request.app[CTX].timeline
    if timeline is None:
        raise web.HTTPNotFound(text="404: this console keeps no timeline")
    raw = request.query.get("since", "0")
    try:
        since = float(raw[:32])
    except ValueError:
        raise web.HTTPBadRequest(text="400: since must be a Unix time in seconds") from None
    if not math.isfinite(since):
        raise web.HTTPBadRequest(text="400: since must be a Unix time in seconds")
    body = orjson.dumps(timeline.columns(since))
    return web.Response(body=body, content_type="application/json")


def setup(app: web.Application) -> None:
    """Add the chart data route."""
    app.router.add_routes(routes)
