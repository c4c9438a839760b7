"""The control API: HTTP over a unix socket (mode 0600) for `status`, the lifecycle
hooks and tests. Only the agent's own user can reach it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import aiohttp
from aiohttp import web


def create_control_app(status: Callable[[], dict[str, Any]]) -> web.Application:
    """The control API's routes."""
    app = web.Application()

    async def get_status(_request: web.Request) -> web.Response:
        return web.json_response(status())

    app.router.add_get("/status", get_status)
    return app


async def start_control(app: web.Application, path: Path) -> web.AppRunner:
    """Serve `app` on the unix socket `path`; the caller cleans the runner up."""
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
    return runner


async def request(path: Path, method: str, route: str, timeout: float = 10.0, **kwargs: Any) -> tuple[int, Any]:
    """Call the running agent's control API; raises OSError when no agent listens."""
    connector = aiohttp.UnixConnector(path=str(path))
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.request(method, f"http://agent{route}", **kwargs) as resp:
                return resp.status, await resp.json(content_type=None)
    except aiohttp.ClientConnectorError as e:
        raise OSError(f"no agent is listening on {path}: {e.os_error}") from None
