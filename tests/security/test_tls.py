"""Optional TLS: with tls.cert/tls.key set, Envoy's public listeners speak TLS (REST and
gRPC) and the console HTTPS; plain HTTP is refused there. Off by default (every other
test runs without it)."""

from __future__ import annotations

import json
import ssl
import urllib.request

import grpc
import numpy as np
import pytest

from agent.serving.protos import predict_pb2, prediction_service_pb2_grpc
from agent.serving.tensors import from_ndarray
from tests.harness.foundation_trees import single_node_tree
from tests.harness.node import Node, http, wait_for
from tests.harness.tls import self_signed


@pytest.fixture
def tls_node(node_ip, data_dir, tmp_path):
    cert, key = self_signed(node_ip, tmp_path)
    n = Node(data_dir, single_node_tree(node_ip, **{"tls.cert": cert, "tls.key": key}))
    n.install_models()
    n.start()
    n.cert = cert
    n.key = key
    yield n
    n.stop()


def _https(url: str, cafile_text: str, body: bytes | None = None) -> tuple[int, bytes]:
    context = ssl.create_default_context(cadata=cafile_text)
    req = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(req, context=context, timeout=10) as resp:
            return resp.status, resp.read()
    except OSError:
        return 0, b""


def test_public_listeners_and_console_serve_tls(tls_node):
    ip, cert = tls_node.ip, tls_node.cert
    url = f"https://{ip}:8080/v1/models/half_plus_two:predict"
    body = b'{"instances": [1.0, 2.0, 5.0]}'
    status, answer = wait_for(lambda: (r := _https(url, cert, body))[0] == 200 and r, 60, 0.2, "predict over TLS")
    assert json.loads(answer) == {"predictions": [2.5, 3.0, 4.5]}
    assert http("POST", f"http://{ip}:8080/v1/models/half_plus_two:predict", body)[0] != 200

    credentials = grpc.ssl_channel_credentials(root_certificates=cert.encode())
    with grpc.secure_channel(f"{ip}:8081", credentials) as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        request.inputs["x"].CopyFrom(from_ndarray(np.array([1.0, 2.0, 5.0], dtype=np.float32)))
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    assert list(reply.outputs["y"].float_val) == [2.5, 3.0, 4.5]

    status, page = wait_for(lambda: (r := _https(f"https://{ip}:8090/", cert))[0] == 200 and r, 20, 0.2, "console over HTTPS")
    assert b"<html" in page.lower()
    assert http("GET", f"http://{ip}:8090/")[0] != 200

    lds = tls_node.data_dir / "conf" / "envoy" / "dynamic" / "lds.yaml"
    lds = lds if lds.exists() else next(tls_node.data_dir.rglob("lds.yaml"))
    assert lds.stat().st_mode & 0o077 == 0  # it holds the private key
    status_text = json.dumps(tls_node.status())
    assert "PRIVATE KEY" not in status_text
