"""metad source: the platform's metadata service, followed by long-polling `/self`.

Protocol (reference/appcenter.md section 1): `GET /self` with `Accept: application/json`
gives the whole tree and `X-Metad-Version`; `GET /self?wait=true&prev_version=<v>`
blocks until the tree changes (metad has no server-side timeout, so the client sets
one and polls again). metad reads the version it returns *before* the wait, so every
change wakes the poll twice; the second answer carries the same tree and is dropped
here by comparing trees. A restarted metad starts its counter again: the poll then
answers at once (the versions differ) and every reconnect starts with a plain GET, so
the tree is always re-read (and yielded once per connection even when unchanged, so
the agent sees the source is live again).

Endpoints: `--metadata http://a[:port][/path][,http://b[:port]|,b[:port]]...`: a comma
separates endpoints; an entry without a scheme inherits the first entry's scheme and
path. On any failure the source moves to the next endpoint; after a whole round of
failures it pauses with jittered exponential backoff (capped below one second).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

import aiohttp

import agent.log
from agent.metadata import Snapshot
from agent.metadata.retry import BACKOFF_BASE, BACKOFF_CAP, Backoff, Outage
from agent.state import normalize_tree

log = agent.log.get(__name__)

VERSION_HEADER = "X-Metad-Version"
# A silently dead connection (host gone, no RST) is noticed after this long.
POLL_TIMEOUT = 30.0
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 5.0


class MetadError(Exception):
    """metad answered, but not with a usable tree (wrong status, not JSON, not a directory)."""


def parse_endpoints(spec: str) -> list[str]:
    """The `/self` URLs named by a comma-separated `--metadata` value."""
    entries = [e.strip() for e in spec.split(",") if e.strip()]
    if not entries:
        raise ValueError(f"metad: no endpoint in {spec!r}")
    first = urlsplit(entries[0])
    if first.scheme not in ("http", "https") or not first.netloc:
        raise ValueError(f"metad: {entries[0]!r} is not an http(s):// URL")
    urls = []
    for entry in entries:
        parts = urlsplit(entry if "://" in entry else f"{first.scheme}://{entry}{first.path}")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"metad: {entry!r} is not an http(s) endpoint")
        path = parts.path.rstrip("/")
        if not path.endswith("/self"):
            path += "/self"
        urls.append(f"{parts.scheme}://{parts.netloc}{path}")
    return urls


class MetadSource:
    """Follows `/self` on one of several metad endpoints; yields the tree on every change."""

    def __init__(
        self,
        url: str,
        *,
        local_addr: str | None = None,
        poll_timeout: float = POLL_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        **_ignored: Any,
    ):
        self.endpoints = parse_endpoints(url)
        # metad answers /self for the caller's IP: binding the node's address makes a
        # node that has several addresses (or a test node on 127.x.y.z) ask as itself.
        self.local_addr = local_addr
        self.poll_timeout = poll_timeout
        self.connect_timeout = connect_timeout
        self.backoff = Backoff(backoff_base, backoff_cap)
        self.description = "metad:" + ",".join(self.endpoints)
        self.outage = Outage(self.description)

    @property
    def stale_since(self) -> float | None:
        """When metad became unreachable (None while it answers)."""
        return self.outage.since

    def _session(self) -> aiohttp.ClientSession:
        # A fresh connection per request: a pooled keep-alive connection to a metad
        # that has since restarted would fail the first request after the restart.
        connector = aiohttp.TCPConnector(
            force_close=True,
            local_addr=(self.local_addr, 0) if self.local_addr else None,
        )
        return aiohttp.ClientSession(connector=connector, headers={"Accept": "application/json"})

    async def _get(self, session: aiohttp.ClientSession, url: str, params: dict[str, str],
                   timeout: float | None) -> tuple[dict, int]:
        """One GET of `/self`: the normalized tree and the version metad reported."""
        client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout)
        async with asyncio.timeout(timeout):
            async with session.get(url, params=params, timeout=client_timeout) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise MetadError(f"HTTP {resp.status}: {body[:200].decode(errors='replace')}")
                try:
                    version = int(resp.headers.get(VERSION_HEADER, "0"))
                except ValueError:
                    raise MetadError(f"bad {VERSION_HEADER} header {resp.headers.get(VERSION_HEADER)!r}") from None
        try:
            tree = json.loads(body)
        except ValueError as e:
            raise MetadError(f"response is not JSON: {e}") from None
        if not isinstance(tree, dict):
            raise MetadError(f"/self is not a directory but {type(tree).__name__}")
        return normalize_tree(tree), version

    async def _poll(self, session: aiohttp.ClientSession, url: str, version: int) -> tuple[dict, int] | None:
        """One long-poll; None when our own timeout expired with no change (poll again)."""
        params = {"wait": "true", "prev_version": str(version)}
        try:
            async with asyncio.timeout(self.poll_timeout) as deadline:
                return await self._get(session, url, params, None)
        except TimeoutError:
            if deadline.expired():
                return None
            raise

    async def read(self) -> Snapshot:
        """`/self` now, from the first endpoint that answers (a plain GET each)."""
        errors = []
        async with self._session() as session:
            for url in self.endpoints:
                try:
                    tree, version = await self._get(session, url, {}, READ_TIMEOUT)
                    return Snapshot(tree, str(version), self.description)
                except (aiohttp.ClientError, OSError, TimeoutError, MetadError) as e:
                    errors.append(f"{url}: {str(e) or type(e).__name__}")
        return Snapshot(None, "", self.description, error="; ".join(errors))

    async def snapshots(self) -> AsyncIterator[Snapshot]:
        """Yield the tree once reachable, then on every change, reconnecting forever."""
        last_tree: dict | None = None
        index = 0
        failures_this_round = 0
        async with self._session() as session:
            while True:
                url = self.endpoints[index]
                try:
                    tree, version = await self._get(session, url, {}, READ_TIMEOUT)
                    self.outage.recovered(url)
                    failures_this_round = 0
                    # Yield the first tree of every connection even if unchanged: the
                    # agent then knows the source is live again (status: not stale).
                    last_tree = None
                    while True:
                        if tree != last_tree:
                            last_tree = tree
                            log.debug("metad tree changed", endpoint=url, version=version)
                            yield Snapshot(tree, str(version), self.description)
                        answer = await self._poll(session, url, version)
                        # Only a poll that worked ends the backoff: a metad that answers
                        # GET but fails every wait must not be hammered.
                        self.backoff.reset()
                        if answer is not None:
                            tree, version = answer
                except (aiohttp.ClientError, OSError, TimeoutError, MetadError) as e:
                    self.outage.failed(url, e)
                    index = (index + 1) % len(self.endpoints)
                    failures_this_round += 1
                    if failures_this_round >= len(self.endpoints):
                        failures_this_round = 0
                        await asyncio.sleep(self.backoff.next_delay())
