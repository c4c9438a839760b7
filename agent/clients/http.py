"""What every HTTP client of the node shares: short timeouts, a bound on the answer's
size, and one way to say why a call failed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

TIMEOUT = aiohttp.ClientTimeout(total=2.0, connect=1.0)
MAX_BODY = 4 * 1024 * 1024  # Envoy's cluster dump for hundreds of nodes fits easily


async def get_json(session: aiohttp.ClientSession, url: str, timeout: aiohttp.ClientTimeout = TIMEOUT) -> tuple[int, Any]:
    """GET `url` and parse its JSON body (bounded in size)."""
    async with session.get(url, timeout=timeout, allow_redirects=False) as resp:
        body = await resp.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            raise ValueError(f"answer larger than {MAX_BODY} bytes")
        return resp.status, json.loads(body) if body else None


def describe(e: BaseException) -> str:
    """Why a call failed, as an operator would read it."""
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"cannot connect ({e.os_error.strerror or e.os_error})"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
