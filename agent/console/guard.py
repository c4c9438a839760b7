"""The console's defences as a network service (port 8090): a cap on open connections,
a deadline for a new connection's first request, a Host allow-list (DNS rebinding), and
failed logins slowed down per client address and logged (without the password)."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import tempfile
import time
import weakref
from typing import Awaitable, Callable

from aiohttp import web

from agent import limits
from agent import log as agent_log

log = agent_log.get(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Extra names the console answers to (a DNS name or proxy address), comma-separated.
EXTRA_HOSTS_ENV = "INFERENCE_AGENT_CONSOLE_HOSTS"
# Transports on which a complete request arrived (aiohttp's protocol takes no attributes).
_REQUESTED: "weakref.WeakSet[asyncio.BaseTransport]" = weakref.WeakSet()


class ConnectionGuard:
    """Counts the console's open connections and closes the ones past the cap or too slow."""

    def __init__(self, cap: int = limits.CONSOLE_MAX_CONNECTIONS,
                 header_timeout: float = limits.CONSOLE_HEADER_TIMEOUT):
        self.cap = cap
        self.header_timeout = header_timeout
        self.active = 0
        self.refused = 0

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory that puts every connection under this guard."""
        return lambda: _Guarded(factory(), self)


class _Guarded(asyncio.Protocol):
    """Delegates to aiohttp's protocol, adding the cap and the first-request deadline."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard):
        self._inner = inner
        self._guard = guard
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._admitted = False

    def connection_made(self, transport) -> None:
        self._transport = transport
        if self._guard.active >= self._guard.cap:
            self._guard.refused += 1
            transport.abort()
            return
        self._admitted = True
        self._guard.active += 1
        self._timer = asyncio.get_running_loop().call_later(self._guard.header_timeout, self._deadline)
        self._inner.connection_made(transport)

    def _deadline(self) -> None:
        # No complete request yet: an idle or trickling client holds a slot for nothing.
        if self._transport is not None and self._transport not in _REQUESTED:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._admitted:
            self._inner.data_received(data)

    def eof_received(self):
        return self._inner.eof_received() if self._admitted else None

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()

    def connection_lost(self, exc) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._guard.active -= 1
        if self._timer is not None:
            self._timer.cancel()
        self._inner.connection_lost(exc)


class GuardedSite(web.TCPSite):
    """web.TCPSite whose connections go through a ConnectionGuard."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard, **kwargs):
        super().__init__(runner, host, port, **kwargs)
        self.guard = guard

    async def start(self) -> None:
        """Listen, like TCPSite.start, with the guarded protocol factory."""
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        self._server = await loop.create_server(
            self.guard.wrap(server), self._host, self._port, ssl=self._ssl_context,
            backlog=self._backlog, reuse_address=self._reuse_address, reuse_port=self._reuse_port,
        )


@web.middleware
async def mark_request(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A full request arrived on this connection: its first-request deadline no longer applies."""
    if request.transport is not None:
        _REQUESTED.add(request.transport)
    return await handler(request)


def allowed_hosts(bind_host: str) -> frozenset[str]:
    """Names the console answers to: its address, this machine's names, loopback, extras."""
    names = {bind_host, "localhost", "127.0.0.1", "::1", socket.gethostname()}
    try:
        names.add(socket.getfqdn())
    except OSError:
        pass
    names.update(h.strip() for h in os.environ.get(EXTRA_HOSTS_ENV, "").split(",") if h.strip())
    return frozenset(n.lower() for n in names if n)


def host_of(header: str | None) -> str:
    """The host part of a Host header, without port or IPv6 brackets, lower case."""
    if not header:
        return ""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_check(allowed: frozenset[str]):
    """Middleware: 421 for a Host the console does not go by (a rebinding DNS name)."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if host_of(request.headers.get("Host")) not in allowed:
            return web.Response(status=421, text="421: this console is not served under that host name")
        return await handler(request)

    return check


class LoginThrottle:
    """Failed logins per client address: after the n-th failure, further attempts from it
    are refused (429, Retry-After) for base * 2**(n-1) seconds, up to a maximum. A success
    clears the address. Memory is bounded: old entries are dropped."""

    MAX_CLIENTS = 10_000

    def __init__(self, base: float = limits.LOGIN_BASE_DELAY, maximum: float = limits.LOGIN_MAX_DELAY,
                 clock=time.monotonic):
        self.base = base
        self.maximum = maximum
        self._clock = clock
        self._failures: dict[str, tuple[int, float]] = {}  # address -> (count, locked until)

    def wait(self, client: str) -> float:
        """Seconds before `client` may try again (0 when it may now)."""
        entry = self._failures.get(client)
        return max(0.0, entry[1] - self._clock()) if entry else 0.0

    def failed(self, client: str) -> int:
        """Record a failure; returns the client's failure count."""
        now = self._clock()
        if len(self._failures) >= self.MAX_CLIENTS:
            self._failures = {k: v for k, v in self._failures.items() if v[1] > now}
            while len(self._failures) >= self.MAX_CLIENTS:
                self._failures.pop(next(iter(self._failures)))
        count = self._failures.get(client, (0, 0.0))[0] + 1
        self._failures[client] = (count, now + min(self.maximum, self.base * 2 ** (count - 1)))
        return count

    def succeeded(self, client: str) -> None:
        """Forget the client's failures."""
        self._failures.pop(client, None)


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    """A TLS server context from PEM text (the key passes through a private temporary file)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        with open(cert_file, "w") as f:
            f.write(cert)
        with open(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(key)
        context.load_cert_chain(cert_file, key_file)
    return context
