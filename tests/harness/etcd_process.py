"""A real etcd (Debian's etcd-server, /usr/bin/etcd) for tests and benchmarks.

Each instance gets its own loopback address (etcd's real ports 2379/2380 there) and a
temporary data dir; writes go through etcd's v3 JSON gateway, as the agent reads it.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import aiohttp

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
CLIENT_PORT = 2379
PEER_PORT = 2380


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def ports_free(ip: str, ports: tuple[int, ...] = (CLIENT_PORT, PEER_PORT)) -> bool:
    """True when every port can be bound on `ip`."""
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind((ip, port))
            except OSError:
                return False
    return True


class EtcdProcess:
    """One single-member etcd cluster; start/stop/kill it like a service."""

    def __init__(self, data_dir: Path, ip: str, *, tls: dict[str, str] | None = None):
        self.data_dir = Path(data_dir)
        self.ip = ip
        self.tls = tls  # {"cert": ..., "key": ..., "ca": ...}: serve https, require client certs
        self.proc: subprocess.Popen | None = None
        self.token: str | None = None

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.ip}:{CLIENT_PORT}"

    def spec(self, prefix: str) -> str:
        """The agent's `--metadata` value for `prefix` on this etcd."""
        return f"{'etcds' if self.tls else 'etcd'}://{self.ip}:{CLIENT_PORT}{prefix}"

    def _args(self) -> list[str]:
        peer = f"http://{self.ip}:{PEER_PORT}"
        args = [
            ETCD, "--name", "test", "--data-dir", str(self.data_dir / "etcd"),
            "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"test={peer}", "--log-level", "warn", "--logger", "zap",
        ]
        if self.tls:
            args += ["--cert-file", self.tls["cert"], "--key-file", self.tls["key"],
                     "--trusted-ca-file", self.tls["ca"], "--client-cert-auth"]
        return args

    async def start(self, timeout: float = 20.0) -> None:
        """Start etcd and wait until it answers reads."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "etcd.log", "ab")
        self.proc = subprocess.Popen(self._args(), stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self.call("/v3/kv/range", {"key": _b64("/")})
                return
            except (aiohttp.ClientError, OSError, RuntimeError):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"etcd exited with {self.proc.returncode}; see {self.data_dir / 'etcd.log'}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd on {self.endpoint} did not answer within {timeout}s")
                await asyncio.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop etcd (SIGKILL to simulate a crash) and wait for it."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def _ssl(self):
        if not self.tls:
            return True
        import ssl

        context = ssl.create_default_context(cafile=self.tls["ca"])
        context.load_cert_chain(self.tls["client_cert"], self.tls["client_key"])
        return context

    async def call(self, path: str, body: dict) -> dict:
        """One JSON gateway call; raises RuntimeError with etcd's message on an error."""
        headers = {"Authorization": self.token} if self.token else {}
        async with aiohttp.ClientSession() as session:
            async with session.post(self.endpoint + path, json=body, headers=headers, ssl=self._ssl(),
                                    timeout=aiohttp.ClientTimeout(total=5)) as resp:
                answer = await resp.json(content_type=None)
        if "error" in answer:
            raise RuntimeError(f"etcd {path}: {answer.get('message') or answer['error']}")
        return answer

    async def put(self, key: str, value: str) -> int:
        """Write one key; returns the new revision."""
        answer = await self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})
        return int(answer["header"]["revision"])

    async def put_tree(self, prefix: str, tree: dict, path: str = "") -> int:
        """Write every leaf of `tree` under `prefix` (one key per leaf)."""
        revision = 0
        for name, value in tree.items():
            key = f"{path}/{name}"
            if isinstance(value, dict):
                revision = await self.put_tree(prefix, value, key)
            else:
                revision = await self.put(prefix + key, str(value))
        return revision

    async def delete(self, key: str, prefix: bool = False) -> int:
        """Delete one key, or every key under it with `prefix=True`."""
        body = {"key": _b64(key)}
        if prefix:
            end = bytearray(key.encode())
            end[-1] += 1
            body["range_end"] = _b64(bytes(end))
        answer = await self.call("/v3/kv/deleterange", body)
        return int(answer["header"]["revision"])

    async def compact(self, revision: int) -> None:
        """Compact the history up to `revision`."""
        await self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    async def enable_auth(self, user: str, password: str) -> None:
        """Create `user` with the root role and turn authentication on."""
        await self.call("/v3/auth/user/add", {"name": user, "password": password})
        await self.call("/v3/auth/role/add", {"name": "root"})
        await self.call("/v3/auth/user/grant", {"user": user, "role": "root"})
        await self.call("/v3/auth/enable", {})
        answer = await self.call("/v3/auth/authenticate", {"name": user, "password": password})
        self.token = answer["token"]
