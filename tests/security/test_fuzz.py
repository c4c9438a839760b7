"""A bounded, seeded fuzz of the public surface: 3,000 REST bodies and 3,000 gRPC
messages, mostly straight at the model server (8501/8500) and one in ten through Envoy
(8080/8081). It ends with 0 crashes, 0 INTERNAL/500 answers and the server's RSS within
the bound (checked after every 500 requests and by the health check at the end)."""

from __future__ import annotations

import http.client
import random
from concurrent.futures import ThreadPoolExecutor

import grpc

from tests.security.fuzz import REST_PATHS, grpc_message, rest_body
from tests.security.conftest import RSS_BOUND

REST_CASES = 3000
GRPC_CASES = 3000
SEED = 20261130


def _rest(ip: str, case: int) -> tuple[int, bytes, str]:
    rng = random.Random(SEED * 7 + case)
    body, path = rest_body(rng), rng.choice(REST_PATHS)
    port = 8080 if case % 10 == 0 else 8501
    conn = http.client.HTTPConnection(ip, port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read(), f"REST case {case} {path} {body[:120]!r}"
    finally:
        conn.close()


def _grpc(channels: dict[int, grpc.Channel], ip: str, case: int) -> tuple[grpc.StatusCode, str, str]:
    rng = random.Random(SEED * 11 + case)
    method, data = grpc_message(rng)
    channel = channels[8081 if case % 10 == 0 else 8500]
    call = channel.unary_unary(f"/tensorflow.serving.PredictionService/{method}")
    try:
        call(data, timeout=60)
        return grpc.StatusCode.OK, "", f"gRPC case {case} {method} {data[:120]!r}"
    except grpc.RpcError as e:
        return e.code(), e.details() or "", f"gRPC case {case} {method} {data[:120]!r}"


def test_fuzz_of_the_public_surface(target):
    ip = target.ip
    server = target.model_server()
    peak = 0
    failures = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for start in range(0, REST_CASES, 500):
            for status, body, what in pool.map(lambda c: _rest(ip, c), range(start, start + 500)):
                # 503 is the concurrency cap (retryable); every other answer is a 2xx/4xx.
                if status >= 500 and status != 503:
                    failures.append(f"{status} {body[:200]!r} for {what}")
            peak = max(peak, server.memory_info().rss)
        channels = {port: grpc.insecure_channel(f"{ip}:{port}") for port in (8500, 8081)}
        try:
            for start in range(0, GRPC_CASES, 500):
                for code, details, what in pool.map(lambda c: _grpc(channels, ip, c), range(start, start + 500)):
                    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS):
                        failures.append(f"{code.name} {details[:200]} for {what}")
                peak = max(peak, server.memory_info().rss)
        finally:
            for c in channels.values():
                c.close()
    assert not failures, f"{len(failures)} bad answers, first: " + "\n".join(failures[:10])
    print(f"fuzz: {REST_CASES} REST + {GRPC_CASES} gRPC cases, model server peak RSS {peak >> 20} MiB")
    assert peak < RSS_BOUND
    target.assert_healthy()
