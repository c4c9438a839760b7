"""Cluster throughput: ResNet-50 through one entry node's Envoy vs the three nodes'
model servers called directly, in one run.

    python bench/cluster.py [--seconds 20] [--batch 8] [--concurrency 6]

Three nodes run on 127.0.0.1-3 of this machine (each its own agent, Envoy and built-in
model server). Both measurements load the cluster at the same time from the same client:
(a) every request to node 1's gRPC port (8081), balanced by Envoy across all three;
(b) the same number of clients spread over the three model servers directly (8500).
On one machine the three nodes share its cores, so (b) is the cluster's capacity and the
ratio (a)/(b) is what balancing through one node costs. Target: >= 0.9.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.commands.up import cluster_trees  # noqa: E402
from tests.harness.node import Node  # noqa: E402


def start_cluster(root: Path, ips: list[str]) -> list[Node]:
    """Three nodes through the project's harness, each with the built-in models."""
    nodes = []
    for k, tree in enumerate(cluster_trees(ips, **{"model.name": "resnet"}), start=1):
        tree["host"]["cpu"] = "1"  # three servers share this machine's cores
        data_dir = root / f"node{k}"
        data_dir.mkdir()
        node = Node(data_dir, tree)
        node.install_models()
        nodes.append(node.start("--no-console"))
    return nodes


async def grpc_load(targets: list[str], clients_per_target: int, seconds: float, batch: int, input_name: str) -> float:
    """Images/s of ResNet-50 Predict calls spread over `targets` for `seconds`."""
    import grpc

    from agent.serving.protos import predict_pb2, prediction_service_pb2_grpc
    from agent.serving.tensors import from_ndarray_content

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "resnet"
    data = np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
    request.inputs[input_name].CopyFrom(from_ndarray_content(data))
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    stubs = [prediction_service_pb2_grpc.PredictionServiceStub(c) for c in channels]
    done = 0

    async def client(stub) -> None:
        nonlocal done
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await stub.Predict(request, timeout=60)
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(client(s) for s in stubs for _ in range(clients_per_target)))
    elapsed = time.monotonic() - started
    for c in channels:
        await c.close()
    return done * batch / elapsed


async def input_name(target: str) -> str:
    import grpc

    from agent.serving.protos import get_model_metadata_pb2, prediction_service_pb2_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        req = get_model_metadata_pb2.GetModelMetadataRequest()
        req.model_spec.name = "resnet"
        req.metadata_field.append("signature_def")
        reply = await stub.GetModelMetadata(req, timeout=30)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    reply.metadata["signature_def"].Unpack(sig_map)
    return next(iter(sig_map.signature_def["serving_default"].inputs))


async def wait_ready(targets: list[str], timeout: float = 120) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        for host in targets:
            while True:
                try:
                    async with s.get(f"http://{host}/v1/models/resnet") as r:
                        if b"AVAILABLE" in await r.read():
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"{host} did not serve resnet within {timeout}s")
                await asyncio.sleep(0.5)


TARGET = 0.9


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=6, help="clients in total (a multiple of 3)")
    args = parser.parse_args()
    ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        nodes = start_cluster(Path(tmp), ips)
        try:
            await wait_ready([f"{ip}:8501" for ip in ips] + [f"{ips[0]}:8080"])
            name = await input_name(f"{ips[0]}:8500")
            await grpc_load([f"{ips[0]}:8081"], 3, 3, args.batch, name)  # warm-up
            direct = await grpc_load([f"{ip}:8500" for ip in ips], args.concurrency // 3, args.seconds, args.batch, name)
            routed = await grpc_load([f"{ips[0]}:8081"], args.concurrency, args.seconds, args.batch, name)
        finally:
            for node in nodes:
                node.stop()
    ratio = routed / direct
    print(json.dumps({
        "model": "resnet (ResNet-50)", "batch": args.batch, "clients": args.concurrency, "seconds": args.seconds,
        "direct_sum_images_per_s": round(direct, 1), "through_entry_images_per_s": round(routed, 1),
        "ratio": round(ratio, 3), "target": TARGET,
    }, indent=2))
    if ratio < TARGET:
        print(f"MISSED: through the entry node / direct to the model servers = {ratio:.3f} < {TARGET}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
