"""The built-in model server through the product's own Envoy against the runtimes
in-process, in one run. A real node is started through the project's test harness
(tests.harness.node.Node: `inference-agent run` on a single-node metadata tree, which renders and
starts Envoy and the built-in server) with model.name resnet, on a fresh loopback address.

    python bench/serving.py [--b1-iterations 40] [--b32-iterations 6] [--clients 16] [--seconds 20]

ResNet-50 (the built-in `resnet`, uint8 images [n, 224, 224, 3]), images/s:
  - batch 32: gRPC Predict through Envoy (8081) vs OpenVINO in-process on the same model
    file with the server's settings (precision auto = the CPU's best, one stream over all
    threads, same thread count). Target >= 0.9. Also vs ONNX Runtime in-process.
  - 16 concurrent batch-1 gRPC clients through Envoy (server-side batching merges them) vs
    OpenVINO in-process at batch 32. Target >= 0.8, with p50/p99 latency. Also vs ONNX
    Runtime in-process at batch 32.
  - the batch-1 in-process references, measured alone before the node starts and again
    beside the idle node; ONNX Runtime's thread pool has spinning off (on both sides; the
    server runs resnet on OpenVINO, whose idle threads sleep). Target: beside / alone >= 0.9.
  - seconds from starting the node to resnet AVAILABLE through Envoy, and the model
    server's own load + warmup time from its log, with a cold and a warm compiled-model cache.
In-process and through-Envoy rounds are interleaved so drift in the machine's load hits
both alike. Prints one JSON document; exits 1 naming every missed target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.serving.runtime import RuntimeOptions  # noqa: E402
from agent.serving.runtime_openvino import compile_config  # noqa: E402
from agent.serving.server import cpu_count  # noqa: E402

MODEL = "resnet"
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def images(batch: int, seed: int = 0) -> np.ndarray:
    """Random uint8 RGB images [batch, 224, 224, 3]."""
    return np.random.default_rng(seed).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)


class InProcess:
    """The references: OpenVINO and ONNX Runtime on the model file, in this process."""

    def __init__(self, model_file: Path, threads: int):
        import onnxruntime as ort
        import openvino

        core = openvino.Core()  # no cache: the reference owes nothing to the product's code path
        self.openvino = core.compile_model(core.read_model(str(model_file)), "CPU",
                                           compile_config(RuntimeOptions(threads=threads)))
        self.precision = self.openvino.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self._ov_request = self.openvino.create_infer_request()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.ort = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])

    def run_openvino(self, pixels: np.ndarray) -> np.ndarray:
        return np.array(self._ov_request.infer({"image_bytes": pixels})["probabilities"])

    def run_ort(self, pixels: np.ndarray) -> np.ndarray:
        return self.ort.run(["probabilities"], {"image_bytes": pixels})[0]


def rate(call, pixels: np.ndarray, iterations: int) -> float:
    """images/s of `call` over `iterations` sequential calls (after one warm-up call)."""
    call(pixels)
    started = time.perf_counter()
    for _ in range(iterations):
        call(pixels)
    return len(pixels) * iterations / (time.perf_counter() - started)


def predict_request(pixels: np.ndarray):
    from agent.serving import tensors
    from agent.serving.protos import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["image_bytes"].CopyFrom(tensors.from_ndarray_content(pixels))
    return request


def start_node(data_dir: Path, ip: str, threads: int):
    """A node through the project's harness; returns it and the seconds to resnet AVAILABLE via Envoy."""
    from tests.harness.foundation_trees import single_node_tree
    from tests.harness.node import Node, http, wait_for

    tree = single_node_tree(ip, **{"model.name": MODEL, "enable.access.log": "false"})
    for host in [tree["host"], *tree["hosts"]["model_serving"].values()]:
        host["cpu"] = str(threads)
    node = Node(data_dir, tree)
    started = time.monotonic()
    node.start()

    def available() -> bool:
        status, body = http("GET", f"http://{ip}:8080/v1/models/{MODEL}", timeout=5)
        return node._alive() and status == 200 and b"AVAILABLE" in body

    wait_for(available, timeout=600, interval=0.05, what="resnet AVAILABLE through Envoy")
    return node, time.monotonic() - started


def load_seconds(data_dir: Path) -> float | None:
    """The model server's own time from loading resnet to AVAILABLE (compile and warmup),
    from the last such pair in its log."""
    from datetime import datetime

    started = took = None
    log_file = data_dir / "logs" / "tensorflow_serving.log"
    for line in log_file.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("model") != MODEL or "timestamp" not in entry:
            continue
        at = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
        if entry.get("event") == "loading model version":
            started = at
        elif entry.get("event") == "model version available" and started is not None:
            took = at - started
    return round(took, 2) if took is not None else None


def envoy_b32_and_references(ip: str, refs: InProcess, iterations: int) -> dict:
    import grpc

    from agent.serving import tensors
    from agent.serving.protos import prediction_service_pb2_grpc

    pixels = images(32, 32)
    request = predict_request(pixels)
    with grpc.insecure_channel(f"{ip}:8081", CHANNEL_OPTIONS) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def envoy(_pixels):
            return tensors.to_ndarray(stub.Predict(request, timeout=600).outputs["probabilities"], "probabilities")

        calls = {"envoy_grpc": envoy, "openvino_in_process": refs.run_openvino, "onnxruntime_in_process": refs.run_ort}
        same = float(np.abs(envoy(pixels) - refs.run_openvino(pixels)).max())
        spent = dict.fromkeys(calls, 0.0)
        for name, call in calls.items():
            call(pixels)  # warm-up
        for i in range(iterations):
            order = list(calls)[i % 3:] + list(calls)[: i % 3]
            for name in order:
                started = time.perf_counter()
                calls[name](pixels)
                spent[name] += time.perf_counter() - started
    out = {name: round(32 * iterations / s, 2) for name, s in spent.items()}
    out["max_abs_diff_envoy_vs_openvino_in_process"] = same
    return out


async def concurrent_b1(ip: str, clients: int, seconds: float) -> dict:
    """`clients` gRPC clients, each with its own channel, sending batch-1 requests back to back."""
    import grpc

    from agent.serving.protos import prediction_service_pb2_grpc

    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + seconds

    async def client(i: int) -> None:
        request = predict_request(images(1, 100 + i))
        async with grpc.aio.insecure_channel(f"{ip}:8081", options=CHANNEL_OPTIONS) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            await stub.Predict(request, timeout=600)  # connect and warm
            await start.wait()
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    await stub.Predict(request, timeout=600)
                except grpc.aio.AioRpcError as e:
                    errors.append(f"{e.code().name}: {e.details()}")
                    continue
                latencies.append(time.perf_counter() - t0)

    start = asyncio.Event()
    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    await asyncio.sleep(0)
    deadline = time.monotonic() + seconds
    began = time.monotonic()
    start.set()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - began
    samples = sorted(latencies)
    return {
        "clients": clients,
        "images_per_s": round(len(samples) / elapsed, 2),
        "p50_ms": round(statistics.median(samples) * 1000, 1) if samples else None,
        "p99_ms": round(samples[max(0, int(len(samples) * 0.99) - 1)] * 1000, 1) if samples else None,
        "requests": len(samples),
        "errors": errors[:5],
        "error_count": len(errors),
    }


def server_runtime(ip: str) -> dict:
    from tests.harness.node import http

    status, body = http("GET", f"http://{ip}:8501/v1/models/{MODEL}/runtime", timeout=10)
    return json.loads(body)["versions"][0] if status == 200 else {"error": body.decode(errors="replace")}


def main() -> int:
    from agent.serving.builtin_models import install_builtin
    from tests.harness.addresses import allocate_loopback_ip

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--b1-iterations", type=int, default=40)
    parser.add_argument("--b32-iterations", type=int, default=6)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of the concurrent phase")
    args = parser.parse_args()
    threads = cpu_count()
    ip = allocate_loopback_ip()
    result: dict = {"address": ip, "threads": threads}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        data_dir = Path(tmp)
        install_builtin(data_dir / "models", [MODEL])
        model_file = data_dir / "models" / MODEL / "1" / "model.onnx"
        refs = InProcess(model_file, threads)
        b1 = images(1, 1)
        alone = {"openvino": rate(refs.run_openvino, b1, args.b1_iterations),
                 "onnxruntime": rate(refs.run_ort, b1, args.b1_iterations)}

        node, cold = start_node(data_dir, ip, threads)
        cold_load = load_seconds(data_dir)
        node.stop()
        node, warm = start_node(data_dir, ip, threads)
        warm_load = load_seconds(data_dir)
        try:
            beside = {"openvino": rate(refs.run_openvino, b1, args.b1_iterations),
                      "onnxruntime": rate(refs.run_ort, b1, args.b1_iterations)}
            b32 = envoy_b32_and_references(ip, refs, args.b32_iterations)
            c16 = asyncio.run(concurrent_b1(ip, args.clients, args.seconds))
            runtime = server_runtime(ip)  # with the batching counters of the concurrent phase
        finally:
            node.stop()

    ov32, ort32 = b32["openvino_in_process"], b32["onnxruntime_in_process"]
    ratios = {
        "batch32_envoy_over_openvino_in_process": round(b32["envoy_grpc"] / ov32, 3),
        "batch32_envoy_over_onnxruntime_in_process": round(b32["envoy_grpc"] / ort32, 3),
        "concurrent_b1_envoy_over_openvino_in_process_b32": round(c16["images_per_s"] / ov32, 3),
        "concurrent_b1_envoy_over_onnxruntime_in_process_b32": round(c16["images_per_s"] / ort32, 3),
        "b1_reference_beside_node_over_alone_openvino": round(beside["openvino"] / alone["openvino"], 3),
        "b1_reference_beside_node_over_alone_onnxruntime": round(beside["onnxruntime"] / alone["onnxruntime"], 3),
    }
    targets = {
        "batch32_envoy_over_openvino_in_process": 0.9,
        "concurrent_b1_envoy_over_openvino_in_process_b32": 0.8,
        "b1_reference_beside_node_over_alone_openvino": 0.9,
        "b1_reference_beside_node_over_alone_onnxruntime": 0.9,
    }
    missed = [f"{name} = {ratios[name]} < {target}" for name, target in targets.items() if ratios[name] < target]
    if c16["error_count"]:
        missed.append(f"concurrent clients got {c16['error_count']} errors")
    result.update({
        "server": runtime,
        "in_process_reference": {
            "precision": refs.precision,
            "how": "OpenVINO with the server's compile settings; ONNX Runtime with intra-op spinning off",
            "batch1_alone_images_per_s": {k: round(v, 2) for k, v in alone.items()},
            "batch1_beside_idle_node_images_per_s": {k: round(v, 2) for k, v in beside.items()},
        },
        "batch32_images_per_s": b32,
        "concurrent_batch1_grpc_through_envoy": c16,
        "seconds_to_available": {
            "node_start_to_available_through_envoy": {"cold_compile_cache": round(cold, 2), "warm_compile_cache": round(warm, 2)},
            "model_server_load_and_warmup": {"cold_compile_cache": cold_load, "warm_compile_cache": warm_load},
        },
        "ratios": ratios,
        "targets": {name: f">= {t}" for name, t in targets.items()},
        "missed": missed,
    })
    print(json.dumps(result, indent=2))
    if missed:
        print("MISSED: " + "; ".join(missed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
