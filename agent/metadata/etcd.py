"""etcd source: the `/self` tree kept in etcd v3, one key per leaf under a prefix.

`--metadata etcd://host:port[,host:port]/prefix` (`etcds://` for TLS). Key
`<prefix>/host/ip` holds the leaf `/host/ip`; dots stay inside a name
(`<prefix>/env/model.name`). The source reads the whole prefix once (a range read),
then watches from the next revision and applies the events to its copy. Any break
(the stream ends, a compaction cancels the watch, a leader change, an auth token
expires, the member restarts) is handled the same way: re-read, then watch again,
moving on to the next endpoint and backing off when every endpoint failed. The first
tree of every connection is yielded even when unchanged, so the agent sees the source
is live again.

Why the JSON gRPC gateway (`/v3/kv/range`, `/v3/watch`, `/v3/auth/authenticate`, served
by etcd 3.4+) over aiohttp rather than grpcio: the project already speaks HTTP with
aiohttp, the four calls needed are plain JSON (keys and values base64), and it avoids
carrying generated etcd protobuf code whose versions must match grpcio and protobuf.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from dataclasses import dataclass
from typing import Any, AsyncIterator
from urllib.parse import unquote, urlsplit

import aiohttp

import agent.log
from agent.metadata import Snapshot
from agent.metadata.retry import BACKOFF_BASE, BACKOFF_CAP, Backoff, Outage
from agent.state import normalize_tree

log = agent.log.get(__name__)

CONNECT_TIMEOUT = 2.0
REQUEST_TIMEOUT = 5.0
# With no watch message for this long, one cheap read checks the member still answers
# (a half-open connection would otherwise hang the watch forever).
PROBE_INTERVAL = 10.0
GRPC_UNAUTHENTICATED = 16


class EtcdError(Exception):
    """etcd refused a request or answered something unusable; says which endpoint and why."""


class Compacted(EtcdError):
    """The watch started below etcd's compaction revision: the history is gone."""


class Unauthenticated(EtcdError):
    """The auth token is missing, invalid or expired."""


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def _unb64(text: str | None) -> str:
    return base64.b64decode(text or "").decode("utf-8", errors="replace")


def prefix_range_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix` (etcd's range_end)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


@dataclass(frozen=True)
class EtcdSpec:
    """A parsed `etcd://` argument."""

    endpoints: tuple[str, ...]  # base URLs, e.g. http://127.0.0.1:2379
    prefix: str  # keys start with this; always ends with "/"
    username: str | None = None
    password: str | None = None

    @property
    def description(self) -> str:
        hosts = ",".join(e.split("://", 1)[1] for e in self.endpoints)
        scheme = "etcds" if self.endpoints[0].startswith("https") else "etcd"
        return f"{scheme}://{hosts}{self.prefix.rstrip('/') or '/'}"


def parse_spec(spec: str) -> EtcdSpec:
    """Parse `etcd[s]://[user:password@]host:port[,host:port]/prefix`."""
    parts = urlsplit(spec)
    if parts.scheme not in ("etcd", "etcds"):
        raise ValueError(f"etcd: {parts.scheme or 'the URL'}:// is not etcd:// or etcds://")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    http = "https" if parts.scheme == "etcds" else "http"
    endpoints = tuple(f"{http}://{h.strip()}" for h in hosts.split(",") if h.strip())
    if not endpoints:
        raise ValueError(f"etcd: no host:port in {parts.scheme}://...{parts.path}")
    for e in endpoints:
        if not urlsplit(e).port:
            raise ValueError(f"etcd: endpoint {e.split('://')[1]!r} needs a port (etcd's default is 2379)")
    username = password = None
    if userinfo:
        user, _, pw = userinfo.partition(":")
        username, password = unquote(user), unquote(pw)
    return EtcdSpec(endpoints, parts.path.rstrip("/") + "/", username, password)


def build_tree(kvs: dict[str, str], prefix: str) -> dict:
    """The nested tree for keys under `prefix`: path components split on "/" only."""
    tree: dict[str, Any] = {}
    for key in sorted(kvs):
        parts = [p for p in key[len(prefix):].split("/") if p]
        if not parts:
            continue
        node = tree
        for p in parts[:-1]:
            child = node.get(p)
            if not isinstance(child, dict):
                child = node[p] = {}  # a directory wins over a leaf of the same name
            node = child
        if not isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = kvs[key]
    return normalize_tree(tree)


class EtcdClient:
    """The few etcd v3 calls the source needs, over one endpoint's JSON gateway."""

    def __init__(self, session: aiohttp.ClientSession, endpoint: str, username: str | None,
                 password: str | None, ssl_context: ssl.SSLContext | None):
        self.session = session
        self.endpoint = endpoint
        self.username = username
        self.password = password
        self.ssl = ssl_context if ssl_context is not None else True
        self.token: str | None = None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self.token} if self.token else {}

    async def _call(self, path: str, body: dict) -> dict:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT, sock_connect=CONNECT_TIMEOUT)
        async with self.session.post(f"{self.endpoint}{path}", json=body, headers=self._headers(),
                                     timeout=timeout, ssl=self.ssl) as resp:
            text = await resp.text()
        try:
            answer = json.loads(text)
        except ValueError:
            raise EtcdError(f"{self.endpoint}{path}: HTTP {resp.status}, not JSON: {text[:200]!r}") from None
        if resp.status != 200 or "error" in answer:
            message = answer.get("message") or answer.get("error") or text[:200]
            if answer.get("code") == GRPC_UNAUTHENTICATED or resp.status == 401:
                raise Unauthenticated(f"{self.endpoint}{path}: {message}")
            raise EtcdError(f"{self.endpoint}{path}: HTTP {resp.status}: {message}")
        return answer

    async def authenticate(self) -> None:
        """Get a token when a user is configured (no-op otherwise)."""
        self.token = None
        if self.username:
            answer = await self._call("/v3/auth/authenticate", {"name": self.username, "password": self.password or ""})
            self.token = answer.get("token")

    async def range_prefix(self, prefix: str) -> tuple[dict[str, str], int]:
        """Every key under `prefix` with its value, and the store's revision."""
        key = prefix.encode()
        answer = await self._call("/v3/kv/range", {"key": _b64(key), "range_end": _b64(prefix_range_end(key))})
        kvs = {_unb64(kv["key"]): _unb64(kv.get("value")) for kv in answer.get("kvs", [])}
        return kvs, int(answer["header"]["revision"])

    async def probe(self, prefix: str) -> None:
        """One cheap read that fails if the member does not answer."""
        key = prefix.encode()
        await self._call("/v3/kv/range", {"key": _b64(key), "range_end": _b64(prefix_range_end(key)),
                                          "count_only": True})

    async def watch(self, prefix: str, start_revision: int) -> "WatchStream":
        """Open a watch on `prefix` from `start_revision`; raises Compacted if it is gone."""
        key = prefix.encode()
        body = {"create_request": {"key": _b64(key), "range_end": _b64(prefix_range_end(key)),
                                   "start_revision": str(start_revision)}}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT)
        resp = await self.session.post(f"{self.endpoint}/v3/watch", json=body, headers=self._headers(),
                                       timeout=timeout, ssl=self.ssl)
        stream = WatchStream(self.endpoint, resp)
        if resp.status != 200:
            text = (await resp.text())[:200]
            stream.close()
            raise EtcdError(f"{self.endpoint}/v3/watch: HTTP {resp.status}: {text}")
        try:
            await stream.created()
        except BaseException:
            stream.close()
            raise
        return stream


class WatchStream:
    """One open `/v3/watch` response: newline-separated JSON messages."""

    def __init__(self, endpoint: str, resp: aiohttp.ClientResponse):
        self.endpoint = endpoint
        self.resp = resp
        self._buffer = b""

    async def _message(self) -> dict:
        # readany() is safe to cancel (nothing is consumed until it returns), so a
        # timeout around this method never loses half a message.
        while b"\n" not in self._buffer:
            chunk = await self.resp.content.readany()
            if not chunk:
                raise EtcdError(f"{self.endpoint}/v3/watch: stream closed by the server")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            message = json.loads(line)
        except ValueError:
            raise EtcdError(f"{self.endpoint}/v3/watch: not JSON: {line[:200]!r}") from None
        if "error" in message:
            err = message["error"]
            text = err.get("message") if isinstance(err, dict) else str(err)
            raise EtcdError(f"{self.endpoint}/v3/watch: {text}")
        result = message.get("result", {})
        if result.get("canceled") or result.get("compact_revision"):
            if int(result.get("compact_revision") or 0) > 0:
                raise Compacted(f"{self.endpoint}/v3/watch: history compacted up to revision {result['compact_revision']}")
            reason = result.get("cancel_reason", "")
            if "Unauthenticated" in reason or "auth token" in reason:
                raise Unauthenticated(f"{self.endpoint}/v3/watch: {reason}")
            raise EtcdError(f"{self.endpoint}/v3/watch: canceled by the server: {reason or 'no reason given'}")
        return result

    async def created(self) -> None:
        """Wait for etcd's confirmation that the watch exists."""
        while not (await self._message()).get("created"):
            pass

    async def next_events(self, timeout: float) -> tuple[list[dict], int] | None:
        """The next batch of events and its revision, or None after `timeout` with no message."""
        try:
            async with asyncio.timeout(timeout):
                result = await self._message()
        except TimeoutError:
            return None
        events = result.get("events", [])
        revision = max([int(result.get("header", {}).get("revision", 0))]
                       + [int(e.get("kv", {}).get("mod_revision", 0)) for e in events])
        return events, revision

    def close(self) -> None:
        """Drop the connection."""
        self.resp.close()


def _ssl_context(ca_file: str | None, cert_file: str | None, key_file: str | None) -> ssl.SSLContext | None:
    if not (ca_file or cert_file):
        return None
    context = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


class EtcdSource:
    """Follows a prefix in etcd: yields the tree once read, then on every change."""

    def __init__(
        self,
        spec: str,
        *,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        probe_interval: float = PROBE_INTERVAL,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        **_ignored: Any,
    ):
        self.spec = parse_spec(spec)
        self.username = username or self.spec.username
        self.password = password if password is not None else self.spec.password
        self.ssl_context = _ssl_context(ca_file, cert_file, key_file)
        self.probe_interval = probe_interval
        self.backoff = Backoff(backoff_base, backoff_cap)
        self.description = self.spec.description
        self.outage = Outage(self.description)

    @property
    def stale_since(self) -> float | None:
        """When etcd became unreachable (None while it answers)."""
        return self.outage.since

    async def read(self) -> Snapshot:
        """The tree now: one range read, from the first endpoint that answers."""
        errors = []
        async with aiohttp.ClientSession() as session:
            for endpoint in self.spec.endpoints:
                client = EtcdClient(session, endpoint, self.username, self.password, self.ssl_context)
                try:
                    await client.authenticate()
                    kvs, revision = await client.range_prefix(self.spec.prefix)
                    return Snapshot(build_tree(kvs, self.spec.prefix), str(revision), self.description)
                except (EtcdError, aiohttp.ClientError, OSError, TimeoutError) as e:
                    errors.append(str(e) or f"{endpoint}: {type(e).__name__}")
        return Snapshot(None, "", self.description, error="; ".join(errors))

    async def snapshots(self) -> AsyncIterator[Snapshot]:
        """Yield the tree once read, then after every change, recovering from any break."""
        prefix = self.spec.prefix
        last_tree: dict | None = None
        index = 0
        failures_this_round = 0
        async with aiohttp.ClientSession() as session:
            while True:
                client = EtcdClient(session, self.spec.endpoints[index], self.username, self.password, self.ssl_context)
                stream: WatchStream | None = None
                connected = False
                try:
                    await client.authenticate()
                    kvs, revision = await client.range_prefix(prefix)
                    stream = await client.watch(prefix, revision + 1)
                    connected = True
                    self.outage.recovered(client.endpoint)
                    self.backoff.reset()
                    failures_this_round = 0
                    # Yield the first tree of every connection even if unchanged: the
                    # agent then knows the source is live again (status: not stale).
                    last_tree = None
                    while True:
                        tree = build_tree(kvs, prefix)
                        if tree != last_tree:
                            last_tree = tree
                            yield Snapshot(tree, str(revision), self.description)
                        batch = await stream.next_events(self.probe_interval)
                        if batch is None:
                            await client.probe(prefix)
                            continue
                        events, revision = batch
                        for event in events:
                            kv = event.get("kv", {})
                            key = _unb64(kv.get("key"))
                            if event.get("type") == "DELETE":
                                kvs.pop(key, None)
                            else:
                                kvs[key] = _unb64(kv.get("value"))
                except (EtcdError, aiohttp.ClientError, OSError, TimeoutError) as e:
                    if connected and isinstance(e, (Compacted, Unauthenticated)):
                        # Not an outage: the member answered; re-read almost at once (the
                        # short pause only guards against a server that keeps refusing).
                        log.info("etcd watch restarts", endpoint=client.endpoint, reason=str(e))
                        await asyncio.sleep(self.backoff.next_delay())
                        continue
                    self.outage.failed(client.endpoint, e)
                    index = (index + 1) % len(self.spec.endpoints)
                    failures_this_round += 1
                    if failures_this_round >= len(self.spec.endpoints):
                        failures_this_round = 0
                        await asyncio.sleep(self.backoff.next_delay())
                finally:
                    if stream is not None:
                        stream.close()
