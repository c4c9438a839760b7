"""Model views: the local model tree by model and version, joined with the model server's states."""

from __future__ import annotations

import asyncio
import os
from dataclasses import asdict, dataclass, field

from aiohttp import web

from agent.clients.model_server import ModelServerView, model_status
from agent.console.files import list_dir, scan_models
from agent.console.pages import CTX, SESSION, blocking, render, resolve, safe_status, stream_file

MAX_MODELS_ASKED = 32  # model server calls per page

routes = web.RouteTableDef()


@dataclass
class VersionRow:
    """One version: what is on disk and what the model server says of it."""

    version: str
    on_disk: bool
    size: int = 0
    files: int = 0
    mtime: float = 0.0
    state: str = ""  # the model server's state; "" when it does not list this version
    error: str = ""
    runtime: str = ""  # e.g. openvino, onnxruntime; "" when not loaded (or TF Serving)
    precision: str = ""  # fp32, bf16, fp16
    serving: bool = False  # requests without a version go here
    labels: list[str] = field(default_factory=list)  # version labels pointing here
    share: int | None = None  # percent of unversioned requests it takes (canary split)
    requests: int = 0  # inference requests it served since the model server started


@dataclass
class ModelRow:
    """One model by name."""

    name: str
    configured: bool  # model.name lists it: the cluster serves it
    server: ModelServerView
    versions: list[VersionRow] = field(default_factory=list)
    policy: str = ""  # its version policy (model.version.policy), when configured


def _serving_version(view: ModelServerView) -> str:
    """TF Serving answers unversioned requests with the highest AVAILABLE version; with a
    `canary` label, `stable` (or the newest other version) takes what the canary does not."""
    available = [v.version for v in view.versions if v.state == "AVAILABLE" and v.version.isdigit()]
    canary = view.labels.get("canary")
    if canary is not None:
        stable = str(view.labels["stable"]) if "stable" in view.labels else None
        if stable in available:
            return stable
        available = [v for v in available if v != str(canary)] or available
    return max(available, key=int) if available else ""


def _configured(status: dict) -> dict[str, dict]:
    """The models model.name lists, by name, with their policy and labels."""
    listed = status.get("models")
    if isinstance(listed, list):
        return {str(m.get("name")): m for m in listed if isinstance(m, dict)}
    names = str((status.get("params") or {}).get("model.name", ""))
    return {n.strip(): {"name": n.strip()} for n in names.split(",") if n.strip()}


async def model_rows(app: web.Application) -> list[ModelRow]:
    """Every model on disk (and the configured one), each version with its state."""
    ctx = app[CTX]
    disk = await blocking(app, scan_models, ctx.paths.models)
    configured = _configured(safe_status(ctx))
    names = [m.name for m in disk]
    names = [n for n in configured if n not in names] + names
    asked = names[:MAX_MODELS_ASKED]
    views = await asyncio.gather(*(model_status(app[SESSION], ctx.model_server_url, n) for n in asked))
    by_name = dict(zip(asked, views))
    on_disk = {m.name: m for m in disk}
    rows = []
    for name in names:
        view = by_name.get(name) or ModelServerView(name=name, reachable=False, error="not asked (too many models)")
        serving = _serving_version(view)
        versions: dict[str, VersionRow] = {}
        for v in on_disk[name].versions if name in on_disk else []:
            versions[v.version] = VersionRow(version=v.version, on_disk=True, size=v.size, files=v.files, mtime=v.mtime)
        for s in view.versions:
            row = versions.setdefault(s.version, VersionRow(version=s.version, on_disk=False))
            row.state = s.state
            row.error = "" if s.error_code in ("OK", "0", "") else f"{s.error_code}: {s.error_message}"
            row.serving = s.version == serving
            row.runtime, row.precision, row.requests = s.runtime, s.precision, s.requests
        for label, number in sorted(view.labels.items()):
            versions.setdefault(str(number), VersionRow(version=str(number), on_disk=False)).labels.append(label)
        canary = view.labels.get("canary")
        if canary is not None and view.canary_percent and str(canary) in versions and serving:
            versions[str(canary)].share = view.canary_percent
            versions[serving].share = 100 - view.canary_percent
        ordered = sorted(versions.values(), key=lambda r: int(r.version) if r.version.isdigit() else -1, reverse=True)
        policy = str(configured.get(name, {}).get("policy", ""))
        rows.append(ModelRow(name=name, configured=name in configured, server=view, versions=ordered, policy=policy))
    rows.sort(key=lambda r: (not r.configured, r.name))
    return rows


@routes.get("/models")
async def models_page(request: web.Request) -> web.Response:
    """The page of models, versions, states and sizes."""
    rows = await model_rows(request.app)
    return render(request, "models.html", nav="models", models=rows, server_url=request.app[CTX].model_server_url)


@routes.get("/api/models")
async def models_api(request: web.Request) -> web.Response:
    """The same as JSON."""
    rows = await model_rows(request.app)
    return web.json_response({"models": [asdict(r) for r in rows]})


@routes.get("/models/files")
async def files_root(_request: web.Request) -> web.Response:
    """The model tree's root listing."""
    raise web.HTTPFound("/models/files/")


@routes.get("/models/files/{path:.*}")
async def files_page(request: web.Request) -> web.Response:
    """A directory of the model tree: its entries with sizes and times."""
    rel = request.match_info["path"].rstrip("/")
    root = request.app[CTX].paths.models
    directory = resolve(root, rel, "dir")
    entries = await blocking(request.app, list_dir, root, directory)
    crumbs = []
    parts = rel.split("/") if rel else []
    for i, part in enumerate(parts):
        crumbs.append((part, "/".join(parts[: i + 1])))
    return render(request, "files.html", nav="models", rel=rel, crumbs=crumbs, entries=entries)


@routes.get("/models/download/{path:.+}")
async def files_download(request: web.Request) -> web.StreamResponse:
    """One file of the model tree, streamed."""
    rel = request.match_info["path"]
    path = resolve(request.app[CTX].paths.models, rel, "file")
    return await stream_file(request, path, os.path.basename(rel))


def setup(app: web.Application) -> None:
    """Add the model routes."""
    app.router.add_routes(routes)


async def refresh_runtime_metrics(app: web.Application) -> None:
    """Set the per-version runtime/precision gauge from the model server's answers."""
    gauge = app[CTX].metrics.model_version_runtime
    rows = await model_rows(app)
    gauge.clear()
    for row in rows:
        for v in row.versions:
            if v.runtime:
                gauge.labels(model=row.name, version=v.version, runtime=v.runtime, precision=v.precision).set(1)
