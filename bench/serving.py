"""The built-in model server against in-process ONNX Runtime, directly and through
Envoy, in one run: a real `inference-agent serve` with both built-in models and the real
Envoy in front of it (a minimal static bootstrap of this bench's own: 8080 -> 8501 and
8081 -> 8500, as a node's Envoy routes them), on a fresh loopback address.

    python bench/serving.py [--b1-iterations 12] [--b32-iterations 3] [--requests 1500] [--concurrency 8]

ResNet-50 (the built-in `resnet`) at batch 1 and 32, images/s: in-process ONNX Runtime
(same model file, same intra-op threads) vs gRPC Predict to the server's 8500 vs gRPC
through Envoy's 8081. Calls are sequential and the three ways are interleaved, so drift
in the shared machine's load hits all three alike. Target: Envoy / in-process >= 0.95
at batch 32. Then the seed's half_plus_two REST request is timed directly (8501) and through Envoy (8080): p50/p99
latency one request at a time, and requests/s with --concurrency clients. Target: Envoy
adds <= 1 ms at p50. The output is one JSON document with the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.serving.server import cpu_count  # noqa: E402

NODE_PORTS = (8080, 8081, 8001, 8090, 8500, 8501)
HALF_PLUS_TWO_BODY = b'{"instances": [1.0, 2.0, 5.0]}'


def free_loopback_ip() -> str:
    """A 127.x.y.z whose node ports are free (other runs may share this machine)."""
    for _ in range(200):
        ip = f"127.{random.randint(20, 250)}.{random.randint(0, 255)}.{random.randint(2, 254)}"
        try:
            for port in NODE_PORTS:
                with socket.socket() as s:
                    s.bind((ip, port))
            return ip
        except OSError:
            continue
    raise SystemExit("no free loopback address")


ENVOY_BOOTSTRAP = """
admin:
  address: {socket_address: {address: "IP", port_value: 8001}}
static_resources:
  listeners:
  - name: rest
    address: {socket_address: {address: "IP", port_value: 8080}}
    filter_chains: [{filters: [HCM_rest]}]
  - name: grpc
    address: {socket_address: {address: "IP", port_value: 8081}}
    filter_chains: [{filters: [HCM_grpc]}]
  clusters:
  - name: rest
    type: STATIC
    load_assignment:
      cluster_name: rest
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: "IP", port_value: 8501}}}}]}]
  - name: grpc
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: grpc
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: "IP", port_value: 8500}}}}]}]
"""
HCM = """
      name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: NAME
        codec_type: AUTO
        route_config:
          virtual_hosts:
          - name: all
            domains: ["*"]
            routes: [{match: {prefix: "/"}, route: {cluster: NAME, timeout: 0s}}]
        http_filters:
        - name: envoy.filters.http.router
          typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
"""


def envoy_bootstrap(ip: str) -> dict:
    """A minimal static Envoy in front of one model server: 8080 -> 8501, 8081 -> 8500 (HTTP/2)."""
    doc = yaml.safe_load(ENVOY_BOOTSTRAP.replace("IP", ip))
    for listener in doc["static_resources"]["listeners"]:
        listener["filter_chains"][0]["filters"] = [yaml.safe_load(HCM.replace("NAME", listener["name"]))]
    return doc


def start_node(root: Path, ip: str, threads: int) -> list[subprocess.Popen]:
    """The built-in server on both built-in models, and Envoy in front of it."""
    from agent.envoy import envoy_binary
    from agent.serving.builtin_models import install_builtin

    install_builtin(root / "models")
    config = root / "models.config"
    config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{n}" base_path: "{root / "models" / n}" model_platform: "tensorflow" }}\n'
        for n in ("resnet", "half_plus_two")) + "}\n")
    bootstrap = root / "envoy.yaml"
    bootstrap.write_text(yaml.safe_dump(envoy_bootstrap(ip)))
    server = subprocess.Popen(
        [sys.executable, "-m", "agent", "serve", f"--host={ip}", f"--model_config_file={config}",
         f"--intra_op_threads={threads}"],
        stdout=subprocess.DEVNULL, stderr=open(root / "serve.log", "wb"))
    envoy = subprocess.Popen(
        [envoy_binary(), "-c", str(bootstrap), "--disable-hot-restart", "--log-level", "warn"],
        stdout=subprocess.DEVNULL, stderr=open(root / "envoy.log", "wb"))
    return [server, envoy]


async def wait_serving(session, urls: list[str], model: str, timeout: float = 180) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    for base in urls:
        while True:
            try:
                async with session.get(f"{base}/v1/models/{model}") as r:
                    if r.status == 200 and b"AVAILABLE" in await r.read():
                        break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{base} did not serve {model} within {timeout}s")
            await asyncio.sleep(0.3)


def resnet_phase(ip: str, model_file: Path, threads: int, b1_iterations: int, b32_iterations: int) -> dict:
    import grpc
    import onnxruntime as ort

    from agent.serving import tensors
    from agent.serving.protos import predict_pb2, prediction_service_pb2_grpc

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    channel_options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    stubs = {
        where: prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"{ip}:{port}", channel_options))
        for where, port in (("direct", 8500), ("envoy", 8081))
    }
    results = {}
    for batch, iterations in ((1, b1_iterations), (32, b32_iterations)):
        pixels = np.random.default_rng(batch).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "resnet"
        request.inputs["image_bytes"].CopyFrom(tensors.from_ndarray_content(pixels))
        calls = {
            "in_process": lambda: session.run(["probabilities"], {"image_bytes": pixels})[0],
            "direct": lambda: tensors.to_ndarray(stubs["direct"].Predict(request, timeout=600).outputs["probabilities"]),
            "envoy": lambda: tensors.to_ndarray(stubs["envoy"].Predict(request, timeout=600).outputs["probabilities"]),
        }
        reference = calls["in_process"]()
        for where, call in calls.items():  # warm-up, and the same numbers every way
            np.testing.assert_allclose(call(), reference, rtol=1e-5, err_msg=where)
        spent = dict.fromkeys(calls, 0.0)
        for i in range(iterations):
            order = list(calls)[i % 3:] + list(calls)[: i % 3]
            for where in order:
                started = time.perf_counter()
                calls[where]()
                spent[where] += time.perf_counter() - started
        rate = {where: batch * iterations / s for where, s in spent.items()}
        results[f"batch_{batch}"] = {
            "iterations": iterations,
            "images_per_s": {k: round(v, 2) for k, v in rate.items()},
            "direct_over_in_process": round(rate["direct"] / rate["in_process"], 3),
            "envoy_over_in_process": round(rate["envoy"] / rate["in_process"], 3),
        }
    return results


async def half_plus_two_phase(session, ip: str, requests: int, concurrency: int) -> dict:
    urls = {"direct": f"http://{ip}:8501/v1/models/half_plus_two:predict",
            "envoy": f"http://{ip}:8080/v1/models/half_plus_two:predict"}
    expected = {"predictions": [2.5, 3.0, 4.5]}

    async def one(url: str) -> float:
        started = time.perf_counter()
        async with session.post(url, data=HALF_PLUS_TWO_BODY) as r:
            body = await r.read()
        elapsed = time.perf_counter() - started
        if r.status != 200 or json.loads(body) != expected:
            raise SystemExit(f"{url}: {r.status} {body[:200]!r}")
        return elapsed

    for url in urls.values():
        for _ in range(50):
            await one(url)
    latencies: dict[str, list[float]] = {k: [] for k in urls}
    block = 100
    for i in range(0, requests, block):  # interleaved blocks, one request at a time
        for where, url in urls.items():
            for _ in range(block):
                latencies[where].append(await one(url))
    out = {}
    for where, url in urls.items():
        samples = sorted(latencies[where])
        done = 0

        async def client():
            nonlocal done
            while done < requests:
                done += 1
                await one(url)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        out[where] = {
            "p50_ms": round(statistics.median(samples) * 1000, 3),
            "p99_ms": round(samples[int(len(samples) * 0.99) - 1] * 1000, 3),
            "requests_per_s": round(done / (time.perf_counter() - started), 1),
        }
    out["envoy_adds_p50_ms"] = round(out["envoy"]["p50_ms"] - out["direct"]["p50_ms"], 3)
    out["envoy_over_direct_requests_per_s"] = round(out["envoy"]["requests_per_s"] / out["direct"]["requests_per_s"], 3)
    return out


def grpc_matches_rest(ip: str) -> bool:
    import grpc

    from agent.serving import tensors
    from agent.serving.protos import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tensors.from_ndarray(np.array([1.0, 2.0, 5.0], dtype=np.float32)))
    with grpc.insecure_channel(f"{ip}:8081") as channel:
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    return list(reply.outputs["y"].float_val) == [2.5, 3.0, 4.5]


async def main() -> None:
    import aiohttp

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--b1-iterations", type=int, default=12)
    parser.add_argument("--b32-iterations", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1500, help="half_plus_two requests per way and measure")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    threads = cpu_count()
    ip = free_loopback_ip()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        procs = start_node(Path(tmp), ip, threads)
        try:
            connector = aiohttp.TCPConnector(limit=args.concurrency * 2)
            async with aiohttp.ClientSession(connector=connector) as session:
                await wait_serving(session, [f"http://{ip}:8501", f"http://{ip}:8080"], "resnet")
                resnet = await asyncio.to_thread(
                    resnet_phase, ip, Path(tmp) / "models" / "resnet" / "1" / "model.onnx", threads,
                    args.b1_iterations, args.b32_iterations)
                await wait_serving(session, [f"http://{ip}:8501", f"http://{ip}:8080"], "half_plus_two")
                hpt = await half_plus_two_phase(session, ip, args.requests, args.concurrency)
                grpc_same = await asyncio.to_thread(grpc_matches_rest, ip)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=60)
    b32 = resnet["batch_32"]["envoy_over_in_process"]
    print(json.dumps({
        "address": ip, "intra_op_threads": threads,
        "resnet50_grpc": resnet,
        "half_plus_two_rest": hpt,
        "grpc_through_envoy_matches_rest": grpc_same,
        "targets": {
            "resnet50_batch32_envoy_over_in_process": {"value": b32, "target": ">= 0.95", "met": b32 >= 0.95},
            "half_plus_two_envoy_adds_p50_ms": {"value": hpt["envoy_adds_p50_ms"], "target": "<= 1.0",
                                                "met": hpt["envoy_adds_p50_ms"] <= 1.0},
        },
    }, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
