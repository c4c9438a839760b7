"""Test double: an HTTP proxy in front of a real S3 endpoint (moto) that breaks chosen
responses the way networks and overloaded stores do: connection resets, bodies cut
short, a byte flipped, 500 and 503 answers. Everything else is passed through unchanged.

No real program injects these faults on demand, hence this double; the S3 behind it is real.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass

import aiohttp
from aiohttp import web

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection", "content-length"}

_ERRORS = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("ServiceUnavailable", "Reduce your request rate."),
}


@dataclass
class Fault:
    """Break the next `times` requests whose method matches and whose path contains `path_contains`."""

    kind: str  # "reset" | "truncate" | "flip" (one byte changed) | "replace" (200 with `body`) | "500" | "503"
    method: str = "GET"
    path_contains: str = ""
    times: int = 1
    fired: int = 0
    body: bytes = b""


class FaultProxyDouble:
    """Proxy on 127.0.0.1 (ephemeral port) to `upstream`; add faults with `inject()`."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.faults: list[Fault] = []
        self.requests = 0
        # (method, path with query, Range header) of every request passed through
        self.log: list[tuple[str, str, str]] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def inject(self, kind: str, *, method: str = "GET", path_contains: str = "", times: int = 1,
               body: bytes = b"") -> Fault:
        """Queue a fault; returns it so a test can check `fired`."""
        fault = Fault(kind, method, path_contains, times, body=body)
        self.faults.append(fault)
        return fault

    async def __aenter__(self) -> "FaultProxyDouble":
        self._session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=120))
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc) -> None:
        if self._runner:
            await self._runner.cleanup()
        if self._session:
            await self._session.close()

    def _take_fault(self, request: web.Request) -> Fault | None:
        for fault in self.faults:
            if fault.fired < fault.times and request.method == fault.method and fault.path_contains in request.path:
                fault.fired += 1
                return fault
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.log.append((request.method, request.path_qs, request.headers.get("Range", "")))
        fault = self._take_fault(request)
        if fault and fault.kind == "replace":
            return web.Response(status=200, body=fault.body, content_type="application/xml")
        if fault and fault.kind in ("500", "503"):
            code, message = _ERRORS[int(fault.kind)]
            body = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
            return web.Response(status=int(fault.kind), body=body.encode(), content_type="application/xml")
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=await request.read(), allow_redirects=False
        ) as up:
            body = await up.read()
            out_headers = {k: v for k, v in up.headers.items() if k.lower() not in _HOP}
            status = up.status
        if request.method == "HEAD":
            resp = web.StreamResponse(status=status, headers=out_headers)
            if "Content-Length" in up.headers:  # a HEAD's length describes the object, not this empty body
                resp.content_length = int(up.headers["Content-Length"])
            await resp.prepare(request)
            return resp
        if fault is None or not body:
            return web.Response(status=status, headers=out_headers, body=body)
        if fault.kind == "flip":  # the whole body, one byte in the middle changed
            flipped = bytearray(body)
            flipped[len(body) // 2] ^= 0xFF
            return web.Response(status=status, headers=out_headers, body=bytes(flipped))
        # Promise the whole body, send half, then break the connection.
        resp = web.StreamResponse(status=status, headers=out_headers)
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        await asyncio.sleep(0.05)
        transport = request.transport
        if transport is not None:
            if fault.kind == "reset":
                sock = transport.get_extra_info("socket")
                if sock is not None:  # linger 0: close sends RST, the client sees ECONNRESET
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
            else:
                transport.close()
        raise asyncio.CancelledError()  # stop aiohttp from finishing the response
