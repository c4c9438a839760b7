"""Sampled request logging, off by default: the model server writes the sampled share of
inference requests (REST, gRPC, Open Inference Protocol) as JSON lines with their input
and output cut to the size cap, and never a header (where credentials travel)."""

from __future__ import annotations

import json
import urllib.request

import grpc
import numpy as np
import pytest

from agent.serving import tensors
from agent.serving.protos import predict_pb2, prediction_service_pb2_grpc
from tests.harness.node import wait_for
from tests.harness.serving_support import Server, copy_builtin, write_config

SECRET = "Bearer tok-9f8e7d6c5b4a"


def start(tmp_path, *flags: str) -> Server:
    models = tmp_path / "models"
    copy_builtin(models, "half_plus_two")
    config = tmp_path / "models.config"
    write_config(config, [{"name": "half_plus_two", "base_path": models / "half_plus_two"}])
    server = Server(config, extra_args=flags).start()
    server.wait_available("half_plus_two")
    return server


def post(server: Server, path: str, doc) -> int:
    req = urllib.request.Request(server.rest + path, data=json.dumps(doc).encode(),
                                 headers={"Authorization": SECRET, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_every_sampled_request_is_logged_cut_to_the_cap_without_headers(tmp_path):
    log = tmp_path / "requests.log"
    server = start(tmp_path, f"--request_log_file={log}", "--request_log_sample_rate=1", "--request_log_max_bytes=64")
    try:
        assert post(server, "/v1/models/half_plus_two:predict", {"instances": [1.0, 2.0]}) == 200
        big = {"instances": [float(i) for i in range(500)]}
        assert post(server, "/v1/models/half_plus_two:predict", big) == 200
        assert post(server, "/v1/models/half_plus_two:predict", {"instances": [[1.0], 2.0]}) == 400
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        tensors.from_ndarray(np.array([3.0], dtype=np.float32), request.inputs["x"])
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            stub.Predict(request, timeout=30, metadata=[("authorization", SECRET)])
        assert post(server, "/v2/models/half_plus_two/infer",
                    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [4.0]}]}) == 200
        entries = wait_for(lambda: len(lines(log)) == 5 and lines(log), 20, 0.1, "five request log lines")
    finally:
        assert server.stop() == 0
    small, large, bad, rpc, v2 = entries
    assert (small["api"], small["entrypoint"], small["model"], small["version"], small["status"]) == \
        ("Predict", "REST", "half_plus_two", "1", "OK")
    assert json.loads(small["input"]["text"]) == {"instances": [1.0, 2.0]}
    assert json.loads(small["output"]["text"]) == {"predictions": [2.5, 3.0]}
    assert large["input"]["truncated"] and len(large["input"]["text"].encode()) <= 64
    assert large["input"]["bytes"] == len(json.dumps(big).encode())
    assert bad["status"] == "INVALID_ARGUMENT" and "error" in bad["output"]["text"]
    assert (rpc["entrypoint"], rpc["status"]) == ("GRPC", "OK") and '"half_plus_two"' in rpc["input"]["text"]
    assert (v2["api"], v2["entrypoint"]) == ("ModelInfer", "REST") and v2["input"]["text"].startswith('{"inputs": [{"name": "x"')
    assert all(e["latency_ms"] > 0 for e in entries)
    assert "tok-9f8e7d6c5b4a" not in log.read_text() and "authorization" not in log.read_text().lower()


def test_a_sample_rate_logs_about_that_share_and_none_is_off(tmp_path):
    log = tmp_path / "requests.log"
    server = start(tmp_path, f"--request_log_file={log}", "--request_log_sample_rate=0.25")
    try:
        for _ in range(200):
            assert post(server, "/v1/models/half_plus_two:predict", {"instances": [1.0]}) == 200
    finally:
        assert server.stop() == 0  # writes what is queued
    # Binomial(200, 0.25): mean 50, standard deviation 6.1; these bounds are 5 deviations out.
    assert 19 <= len(lines(log)) <= 81, len(lines(log))
    (tmp_path / "off").mkdir()
    off = start(tmp_path / "off")
    try:
        assert post(off, "/v1/models/half_plus_two:predict", {"instances": [1.0]}) == 200
    finally:
        assert off.stop() == 0
    assert not list((tmp_path / "off").rglob("requests.log"))


@pytest.mark.parametrize("flags", [("--request_log_sample_rate=1.5",), ("--request_log_max_bytes=0",)])
def test_bad_request_log_flags_are_refused_by_name(tmp_path, flags):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "agent", "serve", "--model_base_path", str(tmp_path),
                             f"--request_log_file={tmp_path / 'r.log'}", *flags], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "request_log" in result.stdout + result.stderr


def test_the_parameters_reach_the_model_server_only_when_on(tmp_path):
    from agent.params import parse_params
    from agent.serving.backend import builtin_flags

    off, problems = parse_params({})
    assert problems == [] and not any("request_log" in f for f in builtin_flags(off, tmp_path, tmp_path / "logs"))
    on, problems = parse_params({"request.log.sample.rate": "0.1", "request.log.max.bytes": "2048"})
    assert problems == []
    assert {f"--request_log_file={tmp_path / 'logs' / 'requests.log'}", "--request_log_sample_rate=0.1",
            "--request_log_max_bytes=2048"} <= set(builtin_flags(on, tmp_path, tmp_path / "logs"))
    _, problems = parse_params({"request.log.sample.rate": "2"})
    assert [p.where for p in problems] == ["env/request.log.sample.rate"]
