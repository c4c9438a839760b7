"""TensorFlow SavedModels served without TensorFlow: the committed fixtures (made by
tests/fixtures/make_savedmodels.py with TensorFlow) answer as TensorFlow did, through a
node's real Envoy over REST and gRPC, with TF Serving's metadata, signatures and
classify/regress. fp32 answers are within 1e-5 of TensorFlow's; bf16 within 2e-2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import json_format

from agent.serving import tensors
from agent.serving.loader import load_servable
from agent.serving.protos import (
    classification_pb2,
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from agent.serving.runtime import RuntimeOptions
from tests.harness.addresses import allocate_loopback_ip
from tests.harness.foundation_trees import single_node_tree
from tests.harness.node import Node, http, wait_for

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "savedmodels"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())["models"]
FP32_TOLERANCE = 1e-5
BF16_TOLERANCE = 2e-2  # bf16 keeps 8 bits of mantissa: ~3 significant digits


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def node(request, tmp_path_factory):
    """A serving node whose model.name is one SavedModel fixture, at fp32."""
    name = request.param
    data_dir = tmp_path_factory.mktemp(f"savedmodel-{name}")
    shutil.copytree(FIXTURES / name, data_dir / "models" / name)
    tree = single_node_tree(allocate_loopback_ip(), **{"model.name": name, "serving.precision": "fp32",
                                                       "enable.access.log": "false"})
    n = Node(data_dir, tree)
    n.start()
    n.model = name
    wait_for(lambda: n._alive() and http("GET", f"http://{n.ip}:8080/v1/models/{name}")[0] == 200
             and b"AVAILABLE" in http("GET", f"http://{n.ip}:8080/v1/models/{name}")[1],
             timeout=90, interval=0.2, what=f"{name} AVAILABLE through Envoy")
    yield n
    n.stop()


def _post(node, path: str, doc) -> tuple[int, dict]:
    status, body = http("POST", f"http://{node.ip}:8080{path}", json.dumps(doc).encode(), timeout=30)
    return status, json.loads(body)


def _stub(node):
    channel = grpc.insecure_channel(f"{node.ip}:8081")  # Envoy's gRPC listener
    return channel, prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _predict_cases(name: str):
    return [(sig, case) for sig, case in EXPECTED[name].items() if sig != "signature_def"]


def test_predict_over_rest_matches_tensorflow_in_both_formats(node):
    for sig, case in _predict_cases(node.model):
        inputs = case["inputs"]
        # Columnar ("inputs") format.
        status, doc = _post(node, f"/v1/models/{node.model}:predict", {"signature_name": sig, "inputs": inputs})
        assert status == 200, doc
        outputs = doc["outputs"] if len(case["outputs"]) > 1 else {next(iter(case["outputs"])): doc["outputs"]}
        for key, want in case["outputs"].items():
            np.testing.assert_allclose(np.array(outputs[key]), np.array(want), atol=FP32_TOLERANCE, rtol=0)
        # Row ("instances") format: one object per example (or the bare value for one input).
        rows = len(next(iter(inputs.values())))
        if len(inputs) == 1:
            instances = next(iter(inputs.values()))
        else:
            instances = [{k: v[i] for k, v in inputs.items()} for i in range(rows)]
        status, doc = _post(node, f"/v1/models/{node.model}:predict", {"signature_name": sig, "instances": instances})
        assert status == 200, doc
        for i, prediction in enumerate(doc["predictions"]):
            got = prediction if isinstance(prediction, dict) else {next(iter(case["outputs"])): prediction}
            for key, want in case["outputs"].items():
                np.testing.assert_allclose(np.array(got[key]), np.array(want[i]), atol=FP32_TOLERANCE, rtol=0)


def test_predict_over_grpc_matches_tensorflow(node):
    channel, stub = _stub(node)
    with channel:
        for sig, case in _predict_cases(node.model):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = node.model
            request.model_spec.signature_name = sig
            for key, value in case["inputs"].items():
                request.inputs[key].CopyFrom(tensors.from_ndarray(np.array(value, np.float32)))
            reply = stub.Predict(request, timeout=30)
            assert reply.model_spec.signature_name == sig and reply.model_spec.version.value == 1
            assert set(reply.outputs) == set(case["outputs"])
            for key, want in case["outputs"].items():
                got = tensors.to_ndarray(reply.outputs[key], key)
                np.testing.assert_allclose(got, np.array(want), atol=FP32_TOLERANCE, rtol=0)


def _normalized(signature_def: dict) -> dict:
    """A SignatureDef in JSON without protobuf's default-valued fields, for comparison."""
    def info(t):
        shape = t.get("tensor_shape", {})
        return {"name": t["name"], "dtype": t.get("dtype", "DT_INVALID"), "unknown_rank": shape.get("unknown_rank", False),
                "dims": [int(d.get("size", 0)) for d in shape.get("dim", [])]}
    return {"method_name": signature_def.get("method_name", ""),
            "inputs": {k: info(v) for k, v in signature_def.get("inputs", {}).items()},
            "outputs": {k: info(v) for k, v in signature_def.get("outputs", {}).items()}}


def test_metadata_over_rest_and_grpc_is_tensorflows_signature_defs(node):
    want = {name: _normalized(sig) for name, sig in EXPECTED[node.model]["signature_def"].items()}
    status, body = http("GET", f"http://{node.ip}:8080/v1/models/{node.model}/metadata", timeout=30)
    assert status == 200
    doc = json.loads(body)
    rest = doc["metadata"]["signature_def"]["signature_def"]
    assert {n: _normalized(rest[n]) for n in want} == want
    channel, stub = _stub(node)
    with channel:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = node.model
        reply = stub.GetModelMetadata(request, timeout=30)
    sigs = get_model_metadata_pb2.SignatureDefMap()
    reply.metadata["signature_def"].Unpack(sigs)
    grpc_doc = json_format.MessageToDict(sigs, preserving_proto_field_name=True)["signature_def"]
    assert {n: _normalized(grpc_doc[n]) for n in want} == want
    # Signatures the model has beyond TensorFlow's are only the ones its signatures.json declares.
    extra = set(rest) - set(want)
    assert extra == ({"classify_x_to_y", "regress_x_to_y"} if node.model == "half_plus_two" else set())


def test_classify_and_regress_over_rest_and_grpc(node):
    if node.model != "half_plus_two":
        pytest.skip("classify/regress are declared on the half_plus_two fixture")
    xs = [1.0, 2.0, 5.0]
    want = [0.5 * x + 2 for x in xs]  # what TensorFlow computed, see expected.json
    np.testing.assert_allclose(np.array(EXPECTED["half_plus_two"]["serving_default"]["outputs"]["y"])[:, 0], want)
    examples = [{"x": [x]} for x in xs]
    status, doc = _post(node, "/v1/models/half_plus_two:classify", {"signature_name": "classify_x_to_y", "examples": examples})
    assert status == 200, doc
    assert [[label for label, _ in row] for row in doc["results"]] == [[""]] * 3
    np.testing.assert_allclose([row[0][1] for row in doc["results"]], want, atol=FP32_TOLERANCE)
    status, doc = _post(node, "/v1/models/half_plus_two:regress", {"signature_name": "regress_x_to_y", "examples": examples})
    assert status == 200, doc
    np.testing.assert_allclose(doc["results"], want, atol=FP32_TOLERANCE)
    status, doc = _post(node, "/v1/models/half_plus_two:classify", {"examples": examples})
    assert status == 400 and "tensorflow/serving/classify" in doc["error"]

    channel, stub = _stub(node)
    with channel:
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = "half_plus_two"
        request.model_spec.signature_name = "classify_x_to_y"
        for x in xs:
            request.input.example_list.examples.add().features.feature["x"].float_list.value.append(x)
        reply = stub.Classify(request, timeout=30)
        np.testing.assert_allclose([c.classes[0].score for c in reply.result.classifications], want, atol=FP32_TOLERANCE)
        request = regression_pb2.RegressionRequest()
        request.model_spec.name = "half_plus_two"
        request.model_spec.signature_name = "regress_x_to_y"
        for x in xs:
            request.input.example_list.examples.add().features.feature["x"].float_list.value.append(x)
        reply = stub.Regress(request, timeout=30)
        np.testing.assert_allclose([r.value for r in reply.result.regressions], want, atol=FP32_TOLERANCE)


def test_runtime_and_precision_are_reported(node):
    # /runtime is not TF Serving's API: Envoy's public listeners refuse it, the console
    # reads it from the model server's own port.
    status, body = http("GET", f"http://{node.ip}:8501/v1/models/{node.model}/runtime", timeout=30)
    assert status == 200, body
    (version,) = json.loads(body)["versions"]
    assert version["runtime"] == "openvino" and version["precision"] == "fp32"


def test_an_unknown_signature_is_refused_by_name(node):
    status, doc = _post(node, f"/v1/models/{node.model}:predict", {"signature_name": "nope", "instances": [[1.0]]})
    assert status == 400 and '"nope" not found' in doc["error"]


def test_bf16_answers_within_the_stated_tolerance():
    """bf16 (auto on a CPU with AMX/AVX-512 BF16) against TensorFlow's fp32 answers."""
    case = EXPECTED["cnn"]["serving_default"]
    servable = load_servable("cnn", 1, FIXTURES / "cnn" / "1", RuntimeOptions(precision="bf16", threads=1))
    from agent.serving import inference

    out = inference.predict(servable, servable.signatures["serving_default"],
                            {"images": np.array(case["inputs"]["images"], np.float32)})
    np.testing.assert_allclose(out["probabilities"], np.array(case["outputs"]["probabilities"]), atol=BF16_TOLERANCE)
    if servable.precision != "bf16":
        pytest.skip(f"this CPU runs bf16 requests in {servable.precision}")


def test_a_signature_that_cannot_be_served_says_why_by_name(node):
    if node.model != "multi":
        pytest.skip("the multi fixture has a string signature")
    status, doc = _post(node, "/v1/models/multi:predict", {"signature_name": "match", "instances": ["abc"]})
    assert status == 400 and '"match" cannot be served: string tensors (text) are not run on OpenVINO' in doc["error"]
    status, body = http("GET", f"http://{node.ip}:8501/v1/models/multi/runtime", timeout=30)
    (version,) = json.loads(body)["versions"]
    assert list(version["signatures_not_served"]) == ["match"]


def test_tflite_is_served_on_openvino(tmp_path):
    """The same half_plus_two converted by TensorFlow to TFLite answers as TensorFlow did."""
    from tests.harness.serving_support import Server, write_config

    config = tmp_path / "models.config"
    write_config(config, [{"name": "lite", "base_path": FIXTURES.parent / "tflite" / "half_plus_two"}])
    server = Server(config, extra_args=("--precision=fp32",)).start()
    try:
        server.wait_available("lite")
        status, doc = server.get("/v1/models/lite/metadata")
        (sig,) = doc["metadata"]["signature_def"]["signature_def"].values()
        (alias,) = sig["inputs"]
        case = EXPECTED["half_plus_two"]["serving_default"]
        status, doc = server.post("/v1/models/lite:predict", {"inputs": {alias: case["inputs"]["x"]}})
        assert status == 200, doc
        np.testing.assert_allclose(np.array(doc["outputs"]), np.array(case["outputs"]["y"]), atol=FP32_TOLERANCE, rtol=0)
        assert server.get("/v1/models/lite/runtime")[1]["versions"][0]["runtime"] == "openvino"
    finally:
        server.stop()
