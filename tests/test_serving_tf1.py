"""TF1-era SavedModels through the real built-in model server (REST 8501, gRPC 8500) and
through a node's real Envoy (8080, 8081): TF Serving's half_plus_two in two versions
(00000123, 00000124) with a specific version policy and labels, and an Estimator-style
export. Every signature answers as TensorFlow did (tests/fixtures/tf1/expected.json),
and metadata is the saved SignatureDefs."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import json_format

from agent.serving import tensors
from agent.serving.protos import (
    classification_pb2,
    get_model_metadata_pb2,
    meta_graph_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
    types_pb2,
)
from tests.harness.addresses import allocate_loopback_ip
from tests.harness.foundation_trees import single_node_tree
from tests.harness.node import Node, http, wait_for
from tests.harness.serving_support import Server, write_config

FIXTURES = Path(__file__).parent / "fixtures" / "tf1"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
MODELS = {"half_plus_two": (123, 124), "features": (1,)}
# Through Envoy: the node serves one model, model.name, under its default policy (latest).
ENVOY_MODEL = "half_plus_two"
PARAMETERS = {p["key"] for p in json.loads((Path(__file__).parents[1] / "config_schema.json").read_text())["parameters"]}
CASES = [
    (endpoint, model, version, i)
    for model, versions in MODELS.items()
    for version in versions
    for endpoint in ("server", "envoy")
    if endpoint == "server" or (model == ENVOY_MODEL and version == max(versions))
    for i in range(len(EXPECTED[f"{model}/{version:08d}"]["cases"]))
]
IDS = [f"{e}-{m}/{v}#{i}" for e, m, v, i in CASES]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("tf1")
    for model in MODELS:
        shutil.copytree(FIXTURES / model, root / "models" / model)
    config = root / "models.config"
    write_config(config, [
        {"name": "half_plus_two", "base_path": root / "models" / "half_plus_two", "extra": [
            "model_version_policy { specific { versions: 123 versions: 124 } }",
            'version_labels { key: "stable" value: 123 }',
            'version_labels { key: "canary" value: 124 }',
        ]},
        {"name": "features", "base_path": root / "models" / "features"},
    ])
    # Where the server has a precision setting (issue 15), compare in fp32 as TensorFlow ran.
    s = Server(config, **({"extra_args": ("--precision=fp32",)} if "serving.precision" in PARAMETERS else {}))
    try:
        s.start()
        s.wait_available("half_plus_two", 123, timeout=90)
        s.wait_available("half_plus_two", 124, timeout=90)
        s.wait_available("features", timeout=90)
    except BaseException:
        s.stop()  # a server that never came up must not outlive the test
        raise
    yield s
    assert s.stop() == 0


class _Envoy:
    """A node's Envoy listeners, addressed like Server."""

    def __init__(self, ip: str):
        self.rest = f"http://{ip}:8080"
        self.grpc_target = f"{ip}:8081"

    def get(self, path: str) -> tuple[int, dict]:
        status, body = http("GET", self.rest + path, timeout=60)
        return status, json.loads(body) if body else {}

    def post(self, path: str, doc) -> tuple[int, dict]:
        status, body = http("POST", self.rest + path, json.dumps(doc).encode(), timeout=60)
        return status, json.loads(body) if body else {}


@pytest.fixture(scope="module")
def envoy(tmp_path_factory):
    """A serving node whose model.name is the TF1 half_plus_two (both versions on disk)."""
    data_dir = tmp_path_factory.mktemp("tf1-node")
    shutil.copytree(FIXTURES / ENVOY_MODEL, data_dir / "models" / ENVOY_MODEL)
    env = {"model.name": ENVOY_MODEL, "enable.access.log": "false"}
    if "serving.precision" in PARAMETERS:
        env["serving.precision"] = "fp32"  # answers are compared with TensorFlow's fp32 ones
    node = Node(data_dir, single_node_tree(allocate_loopback_ip(), **env))
    endpoint = _Envoy(node.ip)
    try:
        node.start()
        wait_for(lambda: b"AVAILABLE" in http("GET", f"{endpoint.rest}/v1/models/{ENVOY_MODEL}")[1],
                 timeout=90, interval=0.2, what=f"{ENVOY_MODEL} AVAILABLE through Envoy")
    except BaseException:
        node.stop()  # a node whose model never came up must not outlive the test
        raise
    yield endpoint
    node.stop()


@pytest.fixture
def endpoint(request):
    return request.getfixturevalue(request.param)


def _stub(endpoint):
    channel = grpc.insecure_channel(endpoint.grpc_target)
    return channel, prediction_service_pb2_grpc.PredictionServiceStub(channel)


# Signatures the server refuses (sparse features), saying why.
REFUSED = {"sparse_tags"}


def _case(model, version, index):
    entry = EXPECTED[f"{model}/{version:08d}"]
    case = entry["cases"][index]
    if case["signature"] in REFUSED:
        case = {**case, "error": {"message": f'Serving signature name: "{case["signature"]}" cannot be served: '}}
    return case, entry["signature_def"][case["signature"]]["methodName"].rsplit("/", 1)[1]


@pytest.mark.parametrize("endpoint, model, version, index", CASES, ids=IDS, indirect=["endpoint"])
def test_rest_answers_as_tensorflow(endpoint, model, version, index):
    case, method = _case(model, version, index)
    path = f"/v1/models/{model}/versions/{version}"
    if "examples" in case["inputs"]:
        body = {"signature_name": case["signature"], "examples": case["inputs"]["examples"]}
        status, doc = endpoint.post(f"{path}:{method}", body)
        if "error" in case:
            assert status == 400 and case["error"]["message"] in doc["error"], doc
            return
        assert status == 200, doc
        if method == "classify":
            assert {label for row in doc["results"] for label, _ in row} == {""}  # scores only
            got = [[score for _, score in row] for row in doc["results"]]
            np.testing.assert_allclose(got, case["outputs"]["scores"], rtol=0, atol=1e-5)
        else:
            want = np.asarray(case["outputs"]["outputs"]).reshape(-1)
            np.testing.assert_allclose(doc["results"], want, rtol=0, atol=1e-5)
    else:
        body = {"signature_name": case["signature"], "inputs": case["inputs"]}
        status, doc = endpoint.post(f"{path}:predict", body)
        assert status == 200, doc
        outputs = doc["outputs"] if isinstance(doc["outputs"], dict) else {next(iter(case["outputs"])): doc["outputs"]}
        for alias, want in case["outputs"].items():
            np.testing.assert_allclose(outputs[alias], want, rtol=0, atol=1e-5)


def _examples_input(request_input, examples):
    for features in examples:
        example = request_input.example_list.examples.add()
        for name, values in features.items():
            if all(isinstance(v, int) for v in values):
                example.features.feature[name].int64_list.value.extend(values)
            else:
                example.features.feature[name].float_list.value.extend(values)


@pytest.mark.parametrize("endpoint, model, version, index", CASES, ids=IDS, indirect=["endpoint"])
def test_grpc_answers_as_tensorflow(endpoint, model, version, index):
    case, method = _case(model, version, index)
    channel, stub = _stub(endpoint)
    if "examples" in case["inputs"]:
        request = (classification_pb2.ClassificationRequest if method == "classify" else regression_pb2.RegressionRequest)()
        _examples_input(request.input, case["inputs"]["examples"])
        call = stub.Classify if method == "classify" else stub.Regress
    else:
        request = predict_pb2.PredictRequest()
        inputs = EXPECTED[f"{model}/{version:08d}"]["signature_def"][case["signature"]]["inputs"]
        for alias, value in case["inputs"].items():
            dtype = tensors.NUMPY_DTYPES[types_pb2.DataType.Value(inputs[alias]["dtype"])]
            request.inputs[alias].CopyFrom(tensors.from_ndarray(np.asarray(value, dtype=dtype)))
        call = stub.Predict
    request.model_spec.name = model
    request.model_spec.version.value = version
    request.model_spec.signature_name = case["signature"]
    with channel:
        if "error" in case:
            with pytest.raises(grpc.RpcError) as caught:
                call(request)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert case["error"]["message"] in caught.value.details()
            return
        response = call(request)
    if call is stub.Predict:
        for alias, want in case["outputs"].items():
            np.testing.assert_allclose(tensors.to_ndarray(response.outputs[alias]), want, rtol=0, atol=1e-5)
    elif method == "classify":
        got = [[c.score for c in cl.classes] for cl in response.result.classifications]
        np.testing.assert_allclose(got, case["outputs"]["scores"], rtol=0, atol=1e-5)
    else:
        got = [r.value for r in response.result.regressions]
        np.testing.assert_allclose(got, np.asarray(case["outputs"]["outputs"]).reshape(-1), rtol=0, atol=1e-5)


def _signature_defs(doc: dict) -> dict[str, meta_graph_pb2.SignatureDef]:
    return {name: json_format.ParseDict(sig, meta_graph_pb2.SignatureDef()) for name, sig in doc.items()}


METADATA = [("server", m, v) for m, vs in MODELS.items() for v in vs] + [("envoy", ENVOY_MODEL, max(MODELS[ENVOY_MODEL]))]


@pytest.mark.parametrize("endpoint, model, version", METADATA, ids=[f"{e}-{m}/{v}" for e, m, v in METADATA],
                         indirect=["endpoint"])
def test_metadata_is_the_saved_signature_defs(endpoint, model, version):
    want = _signature_defs(EXPECTED[f"{model}/{version:08d}"]["signature_def"])
    status, doc = endpoint.get(f"/v1/models/{model}/versions/{version}/metadata")
    assert status == 200, doc
    assert _signature_defs(doc["metadata"]["signature_def"]["signature_def"]) == want
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = model
    request.model_spec.version.value = version
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    channel, stub = _stub(endpoint)
    with channel:
        assert stub.GetModelMetadata(request).metadata["signature_def"].Unpack(signature_map)
    assert dict(signature_map.signature_def) == want


def test_versions_and_labels_pick_the_version(server):
    def y(path):
        status, doc = server.post(f"/v1/models/half_plus_two{path}:predict", {"instances": [[1.0]]})
        assert status == 200, doc
        return doc["predictions"]

    assert y("") == [[3.5]]  # the latest version, 124 (b=3)
    assert y("/versions/123") == [[2.5]]
    assert y("/labels/stable") == [[2.5]]
    assert y("/labels/canary") == [[3.5]]
    assert server.states("half_plus_two") == {123: "AVAILABLE", 124: "AVAILABLE"}


def test_predict_on_a_classify_signature_takes_serialized_examples(server):
    from agent.serving.protos import example_pb2

    example = example_pb2.Example()
    example.features.feature["x"].float_list.value.append(6.0)
    blob = example.SerializeToString()
    status, doc = server.post("/v1/models/half_plus_two/versions/123:predict", {
        "signature_name": "classify_x_to_y", "instances": [{"b64": base64.b64encode(blob).decode()}]})
    assert (status, doc) == (200, {"predictions": [[5.0]]})


def test_regress_on_a_float_input_signature_says_it_takes_no_examples(server):
    status, doc = server.post("/v1/models/half_plus_two:regress", {
        "signature_name": "regress_x2_to_y3", "examples": [{"x2": [1.0]}]})
    assert status == 400
    assert doc["error"] == "Expects arg[0] to be float but string is provided"
