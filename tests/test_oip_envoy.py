"""The Open Inference Protocol through Envoy's public ports, as a Triton or KServe user
calls a node: tritonclient over HTTP (8080) and gRPC (8081) infers half_plus_two and the
built-in digits classifier with correct answers, metadata and readiness; the digits
classifier scores at least 90 % on the held-back part of its data set; TF Serving's API
is unchanged beside it; hostile v2 requests get the protocol's errors and the node keeps
serving without a restart.

tritonclient's inference.* messages are loaded in this process: the project's own
grpc_service_pb2 (same names) must not be imported here."""

from __future__ import annotations

import contextlib
import json
import re

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
import yaml
from tritonclient.grpc import service_pb2, service_pb2_grpc

from agent import PROJECT_ROOT
from agent.serving.builtin_models import digits_data
from tests.harness.addresses import allocate_loopback_ip
from tests.harness.foundation_trees import single_node_tree
from tests.harness.node import Node, http, predict, wait_for

X = np.array([1.0, 2.0, 5.0], dtype=np.float32)
EXPECTED = [2.5, 3.0, 4.5]


def _node(tmp_path_factory, model: str):
    data_dir = tmp_path_factory.mktemp(model) / "data"
    data_dir.mkdir()
    ip = allocate_loopback_ip()
    node = Node(data_dir, single_node_tree(ip, **{"model.name": model, "enable.access.log": "false"}))
    node.install_models()
    node.start()
    url = f"http://{ip}:8080/v2/models/{model}/ready"
    wait_for(lambda: node._alive() and http("GET", url)[0] == 200, 90, 0.2, f"{model} ready through Envoy")
    return node


@pytest.fixture(scope="module")
def half_node(tmp_path_factory):
    node = _node(tmp_path_factory, "half_plus_two")
    yield node
    node.stop()


@pytest.fixture(scope="module")
def digits_node(tmp_path_factory):
    node = _node(tmp_path_factory, "digits")
    yield node
    node.stop()


@contextlib.contextmanager
def clients(node):
    """tritonclient's HTTP and gRPC clients on the node's public ports."""
    rest = thttp.InferenceServerClient(f"{node.ip}:8080", network_timeout=60)
    rpc = tgrpc.InferenceServerClient(f"{node.ip}:8081")
    try:
        yield rest, rpc
    finally:
        rest.close()
        rpc.close()


def _model_server_pid(node) -> int:
    return json.loads((node.data_dir / "run" / "model_server.json").read_text())["pid"]


def test_tritonclient_infers_half_plus_two_through_envoy(half_node):
    with clients(half_node) as (rest, rpc):
        for client in (rest, rpc):
            assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("half_plus_two")
            assert not client.is_model_ready("resnet")  # installed on disk, not the cluster's model
        x_http = thttp.InferInput("x", [3], "FP32")
        x_http.set_data_from_numpy(X)
        np.testing.assert_array_equal(rest.infer("half_plus_two", [x_http]).as_numpy("y"), EXPECTED)
        x_grpc = tgrpc.InferInput("x", [3], "FP32")
        x_grpc.set_data_from_numpy(X)
        np.testing.assert_array_equal(rpc.infer("half_plus_two", [x_grpc], model_version="1").as_numpy("y"), EXPECTED)
        assert rest.get_model_metadata("half_plus_two")["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1]}]
        assert rpc.get_model_metadata("half_plus_two").versions == ["1"]


def _digits_classes_http(rest, images: np.ndarray) -> np.ndarray:
    """Classes of a batch through REST, as JSON tensors (what curl users send)."""
    inp = thttp.InferInput("images", list(images.shape), "FP32")
    inp.set_data_from_numpy(images, binary_data=False)
    result = rest.infer("digits", [inp], outputs=[thttp.InferRequestedOutput("classes", binary_data=False)])
    return result.as_numpy("classes")


def test_the_digits_classifier_scores_90_percent_on_held_back_digits_through_envoy(digits_node):
    with clients(digits_node) as (rest, rpc):
        _, _, held_x, held_y = digits_data()
        assert len(held_y) >= 400  # a quarter of scikit-learn's 1,797 digits, never trained on
        by_http = np.concatenate([_digits_classes_http(rest, held_x[i : i + 64]) for i in range(0, len(held_x), 64)])
        inp = tgrpc.InferInput("images", list(held_x.shape), "FP32")
        inp.set_data_from_numpy(held_x)
        result = rpc.infer("digits", [inp])
        by_grpc = result.as_numpy("classes")
        probabilities = result.as_numpy("probabilities")
        http_accuracy = float((by_http == held_y).mean())
        grpc_accuracy = float((by_grpc == held_y).mean())
        print(f"digits accuracy on {len(held_y)} held-back samples: http {http_accuracy:.3f}, grpc {grpc_accuracy:.3f}")
        assert http_accuracy >= 0.90 and grpc_accuracy >= 0.90
        np.testing.assert_array_equal(by_grpc, np.argmax(probabilities, axis=1))
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
        meta = rest.get_model_metadata("digits")
        assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 64]}]
        assert rpc.is_model_ready("digits") and rest.is_server_ready()


def test_the_readme_digits_example_gets_its_class_through_envoy(digits_node):
    readme = (PROJECT_ROOT / "README.md").read_text()
    match = re.search(r"curl -d '(\{\"inputs\".*?)' -X POST http://127\.0\.0\.1:8080(/v2/models/digits/infer)\n# (.*)\n",
                      readme)
    assert match, "README's Try it shows the digits example"
    body, path, answer = match.groups()
    status, reply = http("POST", f"http://{digits_node.ip}:8080{path}", body.encode(), timeout=30)
    assert status == 200
    assert json.loads(reply) == json.loads(answer)
    pixels = json.loads(body)["inputs"][0]["data"]
    _, _, held_x, held_y = digits_data()
    assert pixels == held_x[0].astype(int).tolist()
    assert json.loads(answer)["outputs"][0]["data"] == [int(held_y[0])]


def test_tf_serving_api_is_unchanged_through_envoy(half_node, digits_node):
    assert predict(half_node.ip) == (200, {"predictions": EXPECTED})
    _, _, held_x, held_y = digits_data()
    status, doc = predict(digits_node.ip, model="digits", instances=held_x[:5].tolist())
    assert status == 200
    assert [row["classes"] for row in doc["predictions"]] == held_y[:5].tolist()

    from agent.serving.protos import predict_pb2, prediction_service_pb2_grpc
    from agent.serving.tensors import from_ndarray

    with grpc.insecure_channel(f"{half_node.ip}:8081") as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        request.inputs["x"].CopyFrom(from_ndarray(X))
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    assert list(reply.outputs["y"].float_val) == EXPECTED


def test_hostile_v2_requests_through_envoy_get_errors_and_the_node_keeps_serving(half_node):
    pid = _model_server_pid(half_node)
    base = f"http://{half_node.ip}:8080/v2/models"
    cases = [
        ("half_plus_two", {"inputs": [{"name": "x", "shape": [3], "datatype": "INT64", "data": [1, 2, 5]}]}, 400),
        ("half_plus_two", {"inputs": [{"name": "x", "shape": [9], "datatype": "FP32", "data": [1, 2]}]}, 400),
        ("half_plus_two", {"inputs": [{"name": "x", "shape": [1 << 62], "datatype": "FP32", "data": [1]}]}, 400),
        ("half_plus_two", b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400),
        ("no_such_model", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}, 404),
    ]
    for model, body, expected in cases:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        status, reply = http("POST", f"{base}/{model}/infer", raw, timeout=30)
        assert status == expected, reply
        assert set(json.loads(reply)) == {"error"}

    with grpc.insecure_channel(f"{half_node.ip}:8081") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        lying = service_pb2.ModelInferRequest(model_name="half_plus_two")
        lying.inputs.add(name="x", datatype="FP32", shape=[1 << 20])
        lying.raw_input_contents.append(X.tobytes())
        unknown = service_pb2.ModelInferRequest(model_name="no_such_model")
        unknown.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
        for request, code in ((lying, grpc.StatusCode.INVALID_ARGUMENT), (unknown, grpc.StatusCode.NOT_FOUND)):
            with pytest.raises(grpc.RpcError) as error:
                stub.ModelInfer(request, timeout=30)
            assert error.value.code() == code, error.value.details()
        assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live

    assert predict(half_node.ip) == (200, {"predictions": EXPECTED})
    assert _model_server_pid(half_node) == pid
    status, body = http("POST", f"{base}/half_plus_two/infer",
                        json.dumps({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 5]}]}).encode())
    assert status == 200 and json.loads(body)["outputs"][0]["data"] == EXPECTED


def test_envoy_routes_v2_with_the_tf_serving_routes_retries(half_node):
    lds = yaml.safe_load((half_node.data_dir / "conf" / "envoy" / "dynamic" / "lds.yaml").read_text())
    for listener in lds["resources"]:
        if listener["name"] == "health":
            continue
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        routes = manager["route_config"]["virtual_hosts"][0]["routes"]
        v2 = [r for r in routes if "v2" in json.dumps(r["match"]) or "GRPCInferenceService" in json.dumps(r["match"])]
        assert len(v2) == 1, routes
        # Every route to the model servers (TF Serving's) has the same cluster, timeout
        # and retry policy as the v2 one.
        forwarded = [r["route"] for r in routes if "route" in r and r is not v2[0]]
        assert forwarded and all(route == v2[0]["route"] for route in forwarded)
        assert "retriable_status_codes" in v2[0]["route"]["retry_policy"]
