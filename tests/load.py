"""A bounded asyncio load generator for the cluster tests: steady predict requests
against one entry node, counting every failure by kind. Loopback only."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from dataclasses import dataclass, field

import aiohttp

BODY = json.dumps({"instances": [1.0, 2.0, 5.0]}).encode()
EXPECTED = {"predictions": [2.5, 3.0, 4.5]}


@dataclass
class LoadResult:
    ok: int = 0
    failures: collections.Counter = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def __str__(self) -> str:
        return f"{self.ok} ok, {self.failed} failed {dict(self.failures)}"


class Load:
    """`async with Load(ip, port) as load:` runs `concurrency` clients until the block
    ends (at most `max_seconds`). `port` may be changed while it runs."""

    def __init__(self, ip: str, port: int = 8080, model: str = "half_plus_two", concurrency: int = 4,
                 max_seconds: float = 120.0, check_body: bool = True, expected: dict | None = None):
        self.ip, self.port, self.model = ip, port, model
        self.expected = expected or EXPECTED  # the answer to BODY (half_plus_two's by default)
        self.concurrency = concurrency
        self.max_seconds = max_seconds
        self.check_body = check_body
        self.result = LoadResult()
        self._tasks: list[asyncio.Task] = []
        self._stop = asyncio.Event()

    async def _client(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            url = f"http://{self.ip}:{self.port}/v1/models/{self.model}:predict"
            started = time.monotonic()
            try:
                async with session.post(url, data=BODY) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        self.result.failures[f"http {resp.status}: {body[:80]!r}"] += 1
                    elif self.check_body and json.loads(body) != self.expected:
                        self.result.failures[f"wrong body {body[:80]!r}"] += 1
                    else:
                        self.result.ok += 1
                        self.result.latencies.append(time.monotonic() - started)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
                self.result.failures[type(e).__name__] += 1
                await asyncio.sleep(0.01)

    async def __aenter__(self) -> "Load":
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self._tasks = [asyncio.create_task(self._client(self._session)) for _ in range(self.concurrency)]
        return self

    async def __aexit__(self, *exc) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._session.close()

    async def wait_requests(self, n: int, timeout: float = 30.0) -> None:
        """Wait until `n` more requests have succeeded."""
        target = self.result.ok + n
        deadline = time.monotonic() + timeout
        while self.result.ok < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"load stalled: {self.result}")
            await asyncio.sleep(0.05)
