"""Replays of the attacks on the model server's public surface, at the real ports,
through Envoy (8080 REST, 8081 gRPC) and directly (8501, 8500). After each: the seed's
predict answers [2.5, 3.0, 4.5], no process restarted, the server's RSS is bounded."""

from __future__ import annotations

import io
import json
import shutil

import grpc
import numpy as np
import pytest

from agent import limits
from agent.serving.protos import predict_pb2
from agent.serving.tensors import from_ndarray_content
from tests.harness.node import http, wait_for
from tests.security.attacks import (
    deep_json,
    grpc_call,
    http_raw,
    huge_declared_predict,
    raw_grpc_call,
    reload_config_request,
)

PREDICT = "/v1/models/half_plus_two:predict"


@pytest.fixture
def t(target):
    yield target
    target.assert_healthy()


@pytest.mark.parametrize("port", [8080, 8501])
def test_deeply_nested_json_is_refused(t, port):
    status, body = http("POST", f"http://{t.ip}:{port}{PREDICT}", deep_json(), timeout=30)
    assert status == 400
    assert "JSON Parse error" in json.loads(body)["error"]


@pytest.mark.parametrize("port", [8080, 8501])
def test_nesting_within_the_parser_but_past_the_tensor_rank_is_refused(t, port):
    for inner in (b"[" * 1000 + b"1.0" + b"]" * 1000, b"[" * 1000 + b'"s"' + b"]" * 1000,
                  b'[{"x": ' + b"[" * 900 + b"]" * 900 + b"}]"):
        status, body = http("POST", f"http://{t.ip}:{port}{PREDICT}", b'{"instances": ' + inner + b"}", timeout=30)
        assert status == 400, body
        assert "error" in json.loads(body)


@pytest.mark.parametrize("port", [8081, 8500])
def test_huge_declared_tensor_is_refused_before_allocation(t, port):
    request = huge_declared_predict()
    assert len(request.SerializeToString()) < 40
    code, details = grpc_call(f"{t.ip}:{port}", "Predict", request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "limit" in details


@pytest.mark.parametrize("port", [8081, 8500])
def test_padding_beyond_the_values_sent_is_bounded(t, port):
    request = huge_declared_predict(limits.MAX_FILL_BYTES)  # 16 MiB of float32 from one value
    request.inputs["x"].float_val.append(1.0)
    code, details = grpc_call(f"{t.ip}:{port}", "Predict", request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "padding" in details
    # A small fill (TensorFlow's one-value convention) still works.
    request = huge_declared_predict(3)
    request.inputs["x"].float_val.append(1.0)
    code, reply = grpc_call(f"{t.ip}:{port}", "Predict", request)
    assert code == grpc.StatusCode.OK and list(reply.outputs["y"].float_val) == [2.5, 2.5, 2.5]


@pytest.mark.parametrize("port", [8081, 8500])
def test_unknown_extra_inputs_and_too_many_inputs_are_refused_unread(t, port):
    request = huge_declared_predict(3)
    request.inputs["x"].float_val.extend([1.0, 2.0, 5.0])
    request.inputs["extra"].CopyFrom(huge_declared_predict(10**12).inputs["x"])
    code, details = grpc_call(f"{t.ip}:{port}", "Predict", request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Sent extra: {extra}" in details
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    for i in range(limits.MAX_INPUTS + 1):
        request.inputs[f"in{i}"].dtype = 1
    code, details = grpc_call(f"{t.ip}:{port}", "Predict", request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "inputs" in details


def test_model_admin_call_is_not_routed_by_envoy(t):
    code, _ = grpc_call(f"{t.ip}:8081", "HandleReloadConfigRequest", reload_config_request())
    assert code == grpc.StatusCode.UNIMPLEMENTED
    status, body = http("GET", f"http://{t.ip}:8080/monitoring/prometheus/metrics")
    assert status == 404 and "public API" in json.loads(body)["error"]
    status, _ = http("GET", f"http://{t.ip}:8080/v1/models/half_plus_two")
    assert status == 200
    status, _ = http("GET", f"http://{t.ip}:8080/v1/models/half_plus_two/metadata")
    assert status == 200


@pytest.mark.parametrize("port", [8080, 8501])
def test_body_over_the_limit_is_refused_before_it_is_read(t, port):
    size = 1 << 30  # declared 1 GiB; just over Envoy's limit is sent (the server answers on the header)
    head = (f"POST {PREDICT} HTTP/1.1\r\nHost: {t.ip}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    status, body = http_raw(t.ip, port, head, [b"[" * (1 << 20)] * (limits.ENVOY.max_request_bytes // (1 << 20) + 2))
    assert status == 413, body


@pytest.mark.parametrize("port", [8080, 8501])
def test_chunked_body_over_the_limit_is_refused(t, port):
    head = (f"POST {PREDICT} HTTP/1.1\r\nHost: {t.ip}\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    chunk = b"%x\r\n" % (1 << 20) + b" " * (1 << 20) + b"\r\n"
    status, _ = http_raw(t.ip, port, head, [chunk] * (limits.ENVOY.max_request_bytes // (1 << 20) + 2))
    assert status == 413


@pytest.mark.parametrize("port", [8081, 8500])
def test_grpc_message_over_the_limit_is_refused(t, port):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(from_ndarray_content(np.zeros(limits.ENVOY.max_request_bytes // 4 + 1, np.float32)))
    code, _ = grpc_call(f"{t.ip}:{port}", "Predict", request)
    # The server's own limit and Envoy's (a little higher; it cuts the stream before
    # forwarding it) both say RESOURCE_EXHAUSTED. Never INTERNAL, never a crash.
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("port", [8081, 8500])
def test_random_bytes_as_a_grpc_message(t, port):
    code, _ = raw_grpc_call(f"{t.ip}:{port}", "/tensorflow.serving.PredictionService/Predict", b"\xff" * 64)
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_version_above_int64_is_ignored_not_a_500(t):
    base = t.node.data_dir / "models" / "half_plus_two"
    huge = base / "9999999999999999999"
    shutil.copytree(base / "1", huge)
    try:
        log = t.node.data_dir / "logs" / "tensorflow_serving.log"
        wait_for(lambda: "9999999999999999999" in log.read_text(errors="replace"), 20, what="the ignored version logged")
        for port in (8080, 8501):
            status, body = http("GET", f"http://{t.ip}:{port}/v1/models/half_plus_two")
            assert status == 200, body
        status, body = http("GET", f"http://{t.ip}:8501/v1/models/half_plus_two/versions/99999999999999999999")
        assert status == 400
    finally:
        shutil.rmtree(huge)


def test_envoy_refuses_oversized_headers(t):
    many = "".join(f"X-H{i}: v\r\n" for i in range(limits.ENVOY.max_headers_count + 10))
    status, _ = http_raw(t.ip, 8080, f"GET /v1/models/half_plus_two HTTP/1.1\r\nHost: x\r\n{many}\r\n".encode())
    assert status == 431
    big = "X-Big: " + "a" * (limits.ENVOY.max_request_headers_kb * 1024 + 100) + "\r\n"
    status, _ = http_raw(t.ip, 8080, f"GET /v1/models/half_plus_two HTTP/1.1\r\nHost: x\r\n{big}\r\n".encode())
    assert status == 431
