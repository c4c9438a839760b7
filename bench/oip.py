"""The Open Inference Protocol (KServe v2) against TF Serving's API on the same built-in
model server, in one run: a real `inference-agent serve` with half_plus_two and digits on
a fresh loopback address, called directly on 8501/8500.

    python bench/oip.py [--rounds 300]

Per workload, requests one at a time on a kept-alive connection, the protocols
interleaved in every round so drift in the shared machine's load hits them alike, each
rated at its median latency (1 / p50):

  half_plus_two, 3 floats:  TF REST predict | v2 REST JSON | TF gRPC Predict | v2 gRPC ModelInfer
  digits, batch of 64:      TF REST predict | v2 REST JSON | v2 REST binary | TF gRPC | v2 gRPC

Targets: v2 REST JSON >= 0.8 x TF REST and v2 gRPC >= 0.8 x TF gRPC, in requests/s, on
both workloads (the protocols share the servables; v2 must not add a costly layer).
The output is one JSON document with requests/s and the ratios; the exit code is 1 when
a target is missed, naming it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness.addresses import allocate_loopback_ip  # noqa: E402
from tests.harness.node import http as http_call, wait_for  # noqa: E402
from tests.harness.serving_support import Server  # noqa: E402

TARGET = 0.8


def start_server(root: Path, ip: str) -> Server:
    """The built-in server on half_plus_two and digits, through the project's harness."""
    from agent.serving.builtin_models import install_builtin

    install_builtin(root / "models", ["half_plus_two", "digits"])
    config = root / "models.config"
    config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{n}" base_path: "{root / "models" / n}" model_platform: "tensorflow" }}\n'
        for n in ("half_plus_two", "digits")) + "}\n")
    return Server(config, ip, threads=1).start()


def wait_ready(ip: str, server: Server, timeout: float = 120) -> None:
    """Until the server answers the Open Inference Protocol's readiness call."""
    def ready() -> bool:
        if server.proc.poll() is not None:
            raise SystemExit(f"model server exited: {server.log.read_text(errors='replace')[-2000:]}")
        return http_call("GET", f"http://{ip}:8501/v2/health/ready")[0] == 200

    wait_for(ready, timeout, 0.2, "model server ready")


class Rest:
    """POSTs on one kept-alive connection; each call checks the answer."""

    def __init__(self, ip: str):
        self.conn = http.client.HTTPConnection(ip, 8501, timeout=60)

    def post(self, path: str, body: bytes, headers: dict | None = None) -> bytes:
        self.conn.request("POST", path, body, headers or {})
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise SystemExit(f"{path}: {response.status} {data[:200]!r}")
        return data


def workloads(ip: str):
    """name -> {protocol: zero-argument call}."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    from agent.serving.builtin_models import digits_data
    from agent.serving.protos import predict_pb2, prediction_service_pb2_grpc
    from agent.serving.tensors import from_ndarray, from_ndarray_content

    rest = Rest(ip)
    channel = grpc.insecure_channel(f"{ip}:8500")
    tf = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    v2 = service_pb2_grpc.GRPCInferenceServiceStub(channel)

    x = np.array([1.0, 2.0, 5.0], dtype=np.float32)
    images = digits_data()[2][:64]

    def tf_request(model, alias, array, packed):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.inputs[alias].CopyFrom(from_ndarray_content(array) if packed else from_ndarray(array))
        return request

    def v2_request(model, alias, array):
        request = service_pb2.ModelInferRequest(model_name=model)
        request.inputs.add(name=alias, datatype="FP32", shape=list(array.shape))
        request.raw_input_contents.append(array.tobytes())
        return request

    def v2_json(alias, array):
        return json.dumps({"inputs": [{"name": alias, "shape": list(array.shape), "datatype": "FP32",
                                       "data": array.reshape(-1).tolist()}]}).encode()

    header = json.dumps({"inputs": [{"name": "images", "shape": list(images.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": images.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    binary_body = header + images.tobytes()
    binary_headers = {"Inference-Header-Content-Length": str(len(header))}

    half_tf, half_v2 = tf_request("half_plus_two", "x", x, False), v2_request("half_plus_two", "x", x)
    digits_tf, digits_v2 = tf_request("digits", "images", images, True), v2_request("digits", "images", images)
    half_tf_body = json.dumps({"instances": x.tolist()}).encode()
    digits_tf_body = json.dumps({"instances": images.tolist()}).encode()
    half_v2_body, digits_v2_body = v2_json("x", x), v2_json("images", images)
    return {
        "half_plus_two": {
            "tf_rest": lambda: rest.post("/v1/models/half_plus_two:predict", half_tf_body),
            "v2_rest_json": lambda: rest.post("/v2/models/half_plus_two/infer", half_v2_body),
            "tf_grpc": lambda: tf.Predict(half_tf, timeout=60),
            "v2_grpc": lambda: v2.ModelInfer(half_v2, timeout=60),
        },
        "digits_batch_64": {
            "tf_rest": lambda: rest.post("/v1/models/digits:predict", digits_tf_body),
            "v2_rest_json": lambda: rest.post("/v2/models/digits/infer", digits_v2_body),
            "v2_rest_binary": lambda: rest.post("/v2/models/digits/infer", binary_body, binary_headers),
            "tf_grpc": lambda: tf.Predict(digits_tf, timeout=60),
            "v2_grpc": lambda: v2.ModelInfer(digits_v2, timeout=60),
        },
    }


def measure(calls: dict, rounds: int) -> dict[str, float]:
    """Requests/s of each call at its median latency (robust to the shared machine's load
    spikes), the calls interleaved round by round after a warm-up round."""
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()
    for _ in range(rounds):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            latencies[name].append(time.perf_counter() - started)
    return {name: round(1 / statistics.median(values), 1) for name, values in latencies.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    ip = allocate_loopback_ip()
    with tempfile.TemporaryDirectory(prefix="bench-oip-") as tmp:
        server = start_server(Path(tmp), ip)
        try:
            wait_ready(ip, server)
            results, missed = {}, []
            for workload, calls in workloads(ip).items():
                rates = measure(calls, args.rounds)
                ratios = {"v2_rest_json/tf_rest": round(rates["v2_rest_json"] / rates["tf_rest"], 3),
                          "v2_grpc/tf_grpc": round(rates["v2_grpc"] / rates["tf_grpc"], 3)}
                results[workload] = {"requests_per_s": rates, "ratios": ratios}
                missed += [f"{workload}: {name} = {value} < {TARGET}" for name, value in ratios.items() if value < TARGET]
        finally:
            server.stop()
    results["target"] = f"every ratio >= {TARGET}"
    results["missed"] = missed
    print(json.dumps(results, indent=2))
    for line in missed:
        print(f"target missed: {line}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
