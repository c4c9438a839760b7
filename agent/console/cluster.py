"""Cluster view: this node's role, the serving nodes with their health as Envoy sees it,
the parameters in force, the last metadata change or rejection, and model sync state."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from agent.clients.envoy_admin import EnvoyHost, EnvoyView, envoy_clusters
from agent.console.pages import CTX, SESSION, render, safe_status

routes = web.RouteTableDef()


@dataclass
class ServingNodeRow:
    """A serving node from metadata, with Envoy's view of it per cluster."""

    node: dict[str, Any]
    health: dict[str, EnvoyHost] = field(default_factory=dict)  # cluster name -> host

    @property
    def summary(self) -> str:
        """'healthy' when every cluster sees it healthy, else the worst state; '' if Envoy has no view."""
        states = {h.health for h in self.health.values()}
        for worst in ("unhealthy", "draining", "degraded", "healthy"):
            if worst in states:
                return worst
        return ""


def serving_rows(status: dict[str, Any], envoy: EnvoyView) -> list[ServingNodeRow]:
    """Join metadata's serving nodes with Envoy's hosts by address."""
    rows = []
    for node in status.get("serving_nodes") or []:
        row = ServingNodeRow(node=node)
        for cluster in envoy.clusters:
            for host in cluster.hosts:
                if host.address == node.get("ip") or (host.hostname and host.hostname == node.get("instance_id")):
                    row.health[cluster.name] = host
        rows.append(row)
    return rows


async def cluster_view(app: web.Application) -> dict[str, Any]:
    """Everything the cluster page shows."""
    ctx = app[CTX]
    status = safe_status(ctx)
    envoy = await envoy_clusters(app[SESSION], ctx.envoy_admin_url)
    return {"status": status, "envoy": envoy, "serving": serving_rows(status, envoy)}


@routes.get("/")
async def cluster_page(request: web.Request) -> web.Response:
    """The console's home: the cluster as this node sees it."""
    view = await cluster_view(request.app)
    return render(request, "cluster.html", nav="cluster", envoy_url=request.app[CTX].envoy_admin_url, **view)


@routes.get("/api/cluster")
async def cluster_api(request: web.Request) -> web.Response:
    """The same as JSON."""
    view = await cluster_view(request.app)
    serving = [{"node": r.node, "summary": r.summary, "health": {k: asdict(h) for k, h in r.health.items()}} for r in view["serving"]]
    return web.json_response({"status": view["status"], "envoy": asdict(view["envoy"]), "serving": serving}, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


def setup(app: web.Application) -> None:
    """Add the cluster routes."""
    app.router.add_routes(routes)
