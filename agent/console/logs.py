"""Log views: the list of log files, the last N lines (filtered), live follow over SSE, download."""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import asdict

from aiohttp import web

from agent.console.auth import credentials_ok
from agent.console.files import list_logs
from agent.console.follow import Follower, parse_position
from agent.console.pages import CLOSING, CTX, blocking, render, resolve, stream_file
from agent.console.tail import MAX_RESULT_BYTES, MAX_SCAN_BYTES, BadFilter, Matcher, clamp_lines, make_matcher, tail_file

POLL_SECONDS = 0.25
KEEPALIVE_SECONDS = 15.0
EVENT_LINES = 200  # lines per Server-Sent Event
MAX_FOLLOWERS = 32  # concurrent live streams per console
LINE_CHOICES = (100, 500, 1000, 5000, 10000)

routes = web.RouteTableDef()
_followers = web.AppKey("console_followers", set)


def _filter(request: web.Request) -> tuple[str, bool, Matcher | None, str]:
    """The request's filter (q, regex) as a matcher, with an error message when it is invalid."""
    query = request.query.get("q", "")
    regex = request.query.get("regex", "") in ("1", "on", "true")
    try:
        return query, regex, make_matcher(query, regex), ""
    except BadFilter as e:
        return query, regex, None, str(e)


@routes.get("/logs")
async def log_list(request: web.Request) -> web.Response:
    """The page listing every log file with its size and time."""
    files = await blocking(request.app, list_logs, request.app[CTX].paths.logs)
    return render(request, "logs.html", nav="logs", files=files)


@routes.get("/api/logs")
async def log_list_api(request: web.Request) -> web.Response:
    """The log files as JSON."""
    files = await blocking(request.app, list_logs, request.app[CTX].paths.logs)
    return web.json_response({"files": [asdict(f) for f in files]})


async def _tail(request: web.Request) -> dict:
    """Resolve the requested log and read its tail: what the page and the API show."""
    rel = request.match_info["path"]
    path = resolve(request.app[CTX].paths.logs, rel, "file")
    n = clamp_lines(request.query.get("n"))
    query, regex, matcher, error = _filter(request)
    st = os.stat(path)
    view = {"path": rel, "n": n, "q": query, "regex": regex, "error": error, "mtime": st.st_mtime}
    if error:
        if request.path.startswith("/api/"):
            raise web.HTTPBadRequest(text=json.dumps({"error": error}), content_type="application/json")
        view.update(lines=[], end=0, position="", size=st.st_size, scanned=0, scan_limited=False, size_limited=False)
        return view
    started = time.perf_counter()
    result = await blocking(request.app, tail_file, path, n, matcher)
    view.update(
        lines=result.lines,
        end=result.end,
        position=f"{result.inode}:{result.end}",
        size=result.end,
        scanned=result.scanned,
        scan_limited=result.scan_limited,
        scan_budget=MAX_SCAN_BYTES,
        size_limited=result.size_limited,
        size_budget=MAX_RESULT_BYTES,
        elapsed_ms=round((time.perf_counter() - started) * 1000, 2),
    )
    return view


@routes.get("/logs/view/{path:.+}")
async def log_view(request: web.Request) -> web.Response:
    """The page showing the last N lines of one log, following it live."""
    view = await _tail(request)
    return render(request, "log.html", nav="logs", http_status=400 if view["error"] else 200, choices=LINE_CHOICES, **view)


@routes.get("/api/logs/tail/{path:.+}")
async def log_tail_api(request: web.Request) -> web.Response:
    """The last N (filtered) lines of one log as JSON, with the position to follow from."""
    view = await _tail(request)
    return web.json_response(view)


@routes.get("/logs/download/{path:.+}")
async def log_download(request: web.Request) -> web.StreamResponse:
    """The whole file, streamed in chunks (as long as it was when the download began)."""
    rel = request.match_info["path"]
    path = resolve(request.app[CTX].paths.logs, rel, "file")
    return await stream_file(request, path, os.path.basename(rel))


def _event(data: dict, event: str | None = None, event_id: str | None = None) -> bytes:
    """One Server-Sent Event carrying JSON."""
    out = ""
    if event:
        out += f"event: {event}\n"
    if event_id:
        out += f"id: {event_id}\n"
    return (out + "data: " + json.dumps(data, ensure_ascii=False) + "\n\n").encode()


@routes.get("/logs/follow/{path:.+}", allow_head=False)
async def log_follow(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: new lines of one log as they are written, across rotations."""
    app = request.app
    rel = request.match_info["path"]
    path = resolve(app[CTX].paths.logs, rel, "file")
    _query, _regex, matcher, error = _filter(request)
    if error:
        raise web.HTTPBadRequest(text=error)
    followers = app[_followers]
    if len(followers) >= MAX_FOLLOWERS:
        raise web.HTTPServiceUnavailable(text="too many live views open; close one and retry")
    # A reconnecting EventSource sends the last position it saw; a fresh page sends its own.
    start = parse_position(request.headers.get("Last-Event-ID")) or parse_position(request.query.get("from"))
    follower = Follower(path, matcher, start)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    task = asyncio.current_task()
    followers.add(task)
    closing = app[CLOSING]
    try:
        await resp.write(b"retry: 2000\n\n")
        last_write = time.monotonic()
        while not closing.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            if not credentials_ok(request.headers.get("Authorization"), app[CTX].password()):
                break  # the password changed under an open stream
            batch = await blocking(app, follower.poll)
            position = f"{batch.inode}:{batch.offset}"
            for notice in batch.notices:
                await resp.write(_event({"notice": notice}, event="notice"))
            if batch.lines:
                # Several modest events rather than one huge one; only the last carries the
                # resume position, so a drop in between repeats lines rather than losing them.
                for i in range(0, len(batch.lines), EVENT_LINES):
                    last = i + EVENT_LINES >= len(batch.lines)
                    await resp.write(_event({"lines": batch.lines[i : i + EVENT_LINES]}, event_id=position if last else None))
                last_write = time.monotonic()
            elif time.monotonic() - last_write > KEEPALIVE_SECONDS:
                await resp.write(b": keepalive\n\n")
                last_write = time.monotonic()
            if not batch.more:
                try:
                    async with asyncio.timeout(POLL_SECONDS):
                        await closing.wait()
                except asyncio.TimeoutError:
                    pass
    except ConnectionError:
        pass  # the browser went away
    finally:
        followers.discard(task)
        follower.close()
    return resp


def setup(app: web.Application) -> None:
    """Add the log routes and their per-app state."""
    app[_followers] = set()
    app.router.add_routes(routes)
