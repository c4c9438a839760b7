"""Client of the running agent's control API (a unix socket of mode 0600): `status`, the
lifecycle hooks and tests call it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp


async def request(path: Path, method: str, route: str, timeout: float = 10.0, **kwargs: Any) -> tuple[int, Any]:
    """Call the running agent's control API; raises OSError when no agent listens."""
    connector = aiohttp.UnixConnector(path=str(path))
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.request(method, f"http://agent{route}", **kwargs) as resp:
                return resp.status, await resp.json(content_type=None)
    except aiohttp.ClientConnectorError as e:
        raise OSError(f"no agent is listening on {path}: {e.os_error}") from None
