"""A bounded asyncio load generator for the cluster tests: steady predict requests
against one entry node, counting every failure by kind. Loopback only."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import functools
import json
import time
from dataclasses import dataclass, field
from typing import Callable

import aiohttp

BODY = json.dumps({"instances": [1.0, 2.0, 5.0]}).encode()
EXPECTED = {"predictions": [2.5, 3.0, 4.5]}


@functools.cache
def _jpeg() -> bytes:
    from tests.harness.serving_support import jpeg_bytes

    return jpeg_bytes(32, 24)


def rest_request(model: str) -> tuple[bytes, Callable[[dict], bool]]:
    """The REST body for `model` and a check of its answer: the seed's request for
    half_plus_two (and its copies), one JPEG for resnet."""
    if model.startswith("resnet"):
        body = json.dumps({"instances": [{"b64": base64.b64encode(_jpeg()).decode()}]}).encode()
        return body, lambda doc: len(doc["predictions"][0]["probabilities"]) == 1000
    return BODY, lambda doc: doc == EXPECTED


def grpc_request(model: str):
    """A PredictRequest for `model` and a check of its answer (as `rest_request`)."""
    import numpy as np

    from agent.serving.protos import predict_pb2
    from agent.serving.tensors import from_ndarray

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if model.startswith("resnet"):
        request.inputs["image_bytes"].CopyFrom(from_ndarray(np.array([_jpeg()], dtype=object)))
        return request, lambda r: len(r.outputs["probabilities"].float_val) == 1000
    request.inputs["x"].CopyFrom(from_ndarray(np.array([1.0, 2.0, 5.0], dtype=np.float32)))
    return request, lambda r: list(r.outputs["y"].float_val) == [2.5, 3.0, 4.5]


@contextlib.contextmanager
def prediction_stub(ip: str, port: int = 8081):
    """A blocking TF Serving PredictionService stub on one gRPC channel (one HTTP/2
    connection, so one Envoy worker), closed on exit."""
    import grpc

    from agent.serving.protos import prediction_service_pb2_grpc

    with grpc.insecure_channel(f"{ip}:{port}") as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


@dataclass
class LoadResult:
    ok: int = 0
    failures: collections.Counter = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    completed_at: list[float] = field(default_factory=list)  # time.monotonic() of each success

    def succeeded(self, started: float) -> None:
        """Count one success of a request sent at `started`."""
        now = time.monotonic()
        self.ok += 1
        self.latencies.append(now - started)
        self.completed_at.append(now)

    def rate_over(self, seconds: float) -> float:
        """Successes per second over the last `seconds` (all of them, load or not)."""
        since = time.monotonic() - seconds
        return sum(1 for t in self.completed_at if t > since) / seconds

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
        self.expected = expected  # the answer to BODY, when not the model's usual check (rest_request)
        self.concurrency = concurrency
        self.max_seconds = max_seconds
        self.check_body = check_body
        self.result = LoadResult()
        self._tasks: list[asyncio.Task] = []
        self._stop = asyncio.Event()

    async def _client(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            model = self.model  # may change while the load runs (a model switch)
            url = f"http://{self.ip}:{self.port}/v1/models/{model}:predict"
            data, check = rest_request(model)
            started = time.monotonic()
            try:
                async with session.post(url, data=data) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        self.result.failures[f"http {resp.status}: {body[:80]!r}"] += 1
                    elif self.check_body and not self._right(json.loads(body), check):
                        self.result.failures[f"wrong body {body[:80]!r}"] += 1
                    else:
                        self.result.succeeded(started)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
                self.result.failures[type(e).__name__] += 1
                await asyncio.sleep(0.01)

    def _right(self, doc: dict, check: Callable[[dict], bool]) -> bool:
        """The answer is the one asked for (`expected`), else the model's usual check."""
        return doc == self.expected if self.expected is not None else check(doc)

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


class GrpcLoad(Load):
    """The same load on the gRPC port (`grpc.port`, 8081), one channel per client;
    every status other than OK counts as a failure."""

    def __init__(self, ip: str, port: int = 8081, **kwargs):
        super().__init__(ip, port, **kwargs)

    async def _grpc_client(self) -> None:
        import grpc

        from agent.serving.protos import prediction_service_pb2_grpc

        deadline = time.monotonic() + self.max_seconds
        async with grpc.aio.insecure_channel(f"{self.ip}:{self.port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not self._stop.is_set() and time.monotonic() < deadline:
                request, check = grpc_request(self.model)
                started = time.monotonic()
                try:
                    response = await stub.Predict(request, timeout=30)
                except grpc.aio.AioRpcError as e:
                    self.result.failures[f"grpc {e.code().name}: {e.details()[:80]}"] += 1
                    await asyncio.sleep(0.01)
                    continue
                if check(response):
                    self.result.succeeded(started)
                else:
                    self.result.failures["wrong answer"] += 1

    async def __aenter__(self) -> "GrpcLoad":
        self._tasks = [asyncio.create_task(self._grpc_client()) for _ in range(self.concurrency)]
        return self

    async def __aexit__(self, *exc) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
