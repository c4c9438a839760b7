"""What every console view shares: the app's keys, page rendering, path resolution to HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

import aiohttp
import jinja2
from aiohttp import web

from agent import PROJECT_ROOT, __version__
from agent.console.confine import PathRefused, resolve_under
from agent.console.context import ConsoleContext

T = TypeVar("T")

TEMPLATES = PROJECT_ROOT / "templates" / "console"
STATIC = TEMPLATES / "static"

CTX = web.AppKey("console_context", ConsoleContext)
SESSION = web.AppKey("console_http_session", aiohttp.ClientSession)
CLOSING = web.AppKey("console_closing", asyncio.Event)
JINJA = web.AppKey("console_jinja", jinja2.Environment)
EXECUTOR = web.AppKey("console_executor", ThreadPoolExecutor)
DOWNLOAD_CHUNK = 256 * 1024


def human_size(n: int | float | None) -> str:
    """1536 -> '1.5 KiB'."""
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def format_time(ts: float | None) -> str:
    """A UTC timestamp as 'YYYY-mm-dd HH:MM:SSZ' ('' for none)."""
    if not ts:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


def ago(ts: float | None, now: float | None = None) -> str:
    """How long ago `ts` was, in the largest sensible unit."""
    if not ts:
        return ""
    delta = max(0, int((now or time.time()) - ts))
    for unit, seconds in (("d", 86400), ("h", 3600), ("min", 60)):
        if delta >= seconds:
            return f"{delta // seconds} {unit} ago"
    return f"{delta} s ago"


def show(value: Any, key: str = "") -> str:
    """A status value as an operator reads it: times as dates, none as a dash, maps as pairs."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and key.endswith(("_at", "_since")) and value > 1e9:
        return f"{format_time(value)} ({ago(value)})"
    if isinstance(value, dict):
        return "  ".join(f"{k}={show(v, str(k))}" for k, v in sorted(value.items()))
    if isinstance(value, (list, tuple)):
        return ", ".join(show(v) for v in value) or "—"
    return str(value)


def make_jinja() -> jinja2.Environment:
    """The console's template environment (autoescaped HTML)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.ChainableUndefined,  # status dicts vary: a missing key renders empty
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(size=human_size, time=format_time, ago=ago, show=show)
    env.globals["agent_version"] = __version__
    return env


def render(request: web.Request, template: str, http_status: int = 200, **values: Any) -> web.Response:
    """A rendered HTML page; every page gets the node's status summary for its header."""
    ctx = request.app[CTX]
    values.setdefault("status", safe_status(ctx))
    values.setdefault("nav", "")
    html = request.app[JINJA].get_template(template).render(**values)
    return web.Response(text=html, status=http_status, content_type="text/html", charset="utf-8")


def safe_status(ctx: ConsoleContext) -> dict[str, Any]:
    """The agent's status, or a placeholder saying why it is unavailable."""
    try:
        # Through JSON, as the API shows it: enums become their values, objects strings.
        return json.loads(json.dumps(ctx.status() or {}, default=str))
    except Exception as e:  # noqa: BLE001 - the console must render whatever the agent's state
        return {"error": f"agent status unavailable: {type(e).__name__}: {e}"}


def resolve(root: Path, rel: str, want: str) -> Path:
    """`rel` under `root` as a real path of kind `want` ('file' or 'dir'), or a 403/404."""
    try:
        path = resolve_under(root, rel)
        st = os.stat(path)
    except PathRefused:
        raise web.HTTPForbidden(text="403: path not allowed") from None
    except (FileNotFoundError, NotADirectoryError):
        raise web.HTTPNotFound(text="404: not found") from None
    except OSError:
        raise web.HTTPForbidden(text="403: path not readable") from None
    ok = stat.S_ISREG(st.st_mode) if want == "file" else stat.S_ISDIR(st.st_mode)
    if not ok:
        raise web.HTTPNotFound(text="404: not found")
    return path


async def stream_file(request: web.Request, path: os.PathLike | str, filename: str) -> web.StreamResponse:
    """Send `path` as an attachment, one bounded chunk at a time."""
    f = await blocking(request.app, open, path, "rb")
    try:
        size = os.fstat(f.fileno()).st_size
        resp = web.StreamResponse(
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f'attachment; filename="{filename}"',
            }
        )
        resp.content_length = size
        await resp.prepare(request)
        remaining = size if request.method != "HEAD" else 0
        while remaining > 0:
            chunk = await blocking(request.app, f.read, min(DOWNLOAD_CHUNK, remaining))
            if not chunk:
                break  # truncated while we sent it: the client sees a short body
            remaining -= len(chunk)
            await resp.write(chunk)
        await resp.write_eof()
        return resp
    finally:
        f.close()


async def blocking(app: web.Application, func: Callable[..., T], *args: Any) -> T:
    """Run blocking file work on the console's own threads (never starving the agent's)."""
    return await asyncio.get_running_loop().run_in_executor(app[EXECUTOR], func, *args)
