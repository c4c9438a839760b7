"""TF1-era SavedModels (TF Serving's half_plus_two, an Estimator-style export) served without
TensorFlow: every signature, predict, classify and regress, gives TensorFlow's own answers
(recorded in tests/fixtures/tf1/expected.json by make_fixtures.py) within 1e-5 in fp32,
bad tf.Examples get TensorFlow's error messages, and a signature that cannot be served is
refused by name while the others load."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import openvino
import pytest
from google.protobuf import json_format

from agent.serving.errors import ServingError
from agent.serving.protos import error_codes_pb2 as codes
from agent.serving.protos import example_pb2, saved_model_pb2
from agent.serving.savedmodel_tf1 import Tf1Signature, is_tf1, load_tf1_signatures, read_meta_graph
from agent.serving.servable import LoadError

FIXTURES = Path(__file__).parent / "fixtures" / "tf1"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
VERSIONS = sorted(k for k in EXPECTED if "/" in k)
CASES = [(version, i) for version in VERSIONS for i in range(len(EXPECTED[version]["cases"]))]
# What the server does not serve, and says why (TensorFlow's answers are recorded all the same).
REFUSED = {
    "features/00000001": {
        "sparse_tags": "it uses sparse or ragged features of ParseExample/ParseExampleV2, which are not served",
    },
}
HALF_PLUS_TWO_SIGNATURES = {"serving_default", "classify_x_to_y", "regress_x_to_y", "regress_x_to_y2", "regress_x2_to_y3"}

_core = openvino.Core()
_loaded: dict[str, object] = {}
_compiled: dict[int, object] = {}


def _load(version: str):
    if version not in _loaded:
        _loaded[version] = load_tf1_signatures(FIXTURES / version)
    return _loaded[version]


def _run(signature: Tf1Signature, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a signature's model in fp32 (the CPU's default here would be bf16 on AMX)."""
    key = id(signature.model)
    if key not in _compiled:
        _compiled[key] = _core.compile_model(signature.model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    compiled = _compiled[key]
    results = compiled(feeds)
    return {alias: results[compiled.output(port.port)] for alias, port in signature.outputs.items()}


def _serialized(features: dict) -> bytes:
    example = example_pb2.Example()
    for name, values in features.items():
        feature = example.features.feature[name]
        if all(isinstance(v, int) for v in values):
            feature.int64_list.value.extend(values)
        else:
            feature.float_list.value.extend(values)
    return example.SerializeToString()


@pytest.mark.parametrize("version, index", CASES, ids=[f"{v}#{i}" for v, i in CASES])
def test_every_signature_gives_tensorflows_answer(version, index):
    case = EXPECTED[version]["cases"][index]
    if case["signature"] in REFUSED.get(version, {}):
        assert case["signature"] in _load(version).refused
        return
    signature = _load(version).signatures[case["signature"]]
    inputs = case["inputs"]
    if "examples" in inputs:
        # Decoded examples (what REST/gRPC Classify and Regress hand over) and serialized
        # ones (a Predict on the examples input) must parse alike.
        serialized = np.array([_serialized(e) for e in inputs["examples"]], dtype=object)
        attempts = [
            lambda: signature.parser.feeds(inputs["examples"]),
            lambda: signature.feeds({signature.examples_input: serialized}),
        ]
    else:
        arrays = {alias: np.asarray(v, dtype=signature.inputs[alias].dtype) for alias, v in inputs.items()}
        attempts = [lambda: signature.feeds(arrays)]
    for make_feeds in attempts:
        if "error" in case:
            with pytest.raises(ServingError) as caught:
                make_feeds()
            assert caught.value.code == codes.INVALID_ARGUMENT
            assert str(caught.value) == case["error"]["message"]
            continue
        got = _run(signature, make_feeds())
        assert set(got) == set(case["outputs"])
        for alias, want in case["outputs"].items():
            np.testing.assert_allclose(got[alias], np.asarray(want, dtype=np.float32), rtol=0, atol=1e-5)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_signature_is_served_with_its_saved_signature_def(version):
    load = _load(version)
    assert load.refused == REFUSED.get(version, {})
    assert set(load.signatures) == set(EXPECTED[version]["signature_def"]) - set(load.refused)
    for name, proto in load.signature_defs.items():
        assert json_format.MessageToDict(proto) == EXPECTED[version]["signature_def"][name]
    assert set(load.signature_defs) == set(EXPECTED[version]["signature_def"])
    for name, signature in load.signatures.items():
        # What GetModelMetadata and REST /metadata report: the SignatureDef as TensorFlow saved it.
        assert json_format.MessageToDict(signature.signature_def) == EXPECTED[version]["signature_def"][name]
        assert signature.method_name == EXPECTED[version]["signature_def"][name]["methodName"]


def test_half_plus_two_signatures_take_the_paths_tf_serving_gives_them():
    load = _load("half_plus_two/00000123")
    assert set(load.signatures) == HALF_PLUS_TWO_SIGNATURES
    plain = {n for n, s in load.signatures.items() if s.parser is None}
    assert plain == {"serving_default", "regress_x2_to_y3"}  # their inputs are float tensors
    for name in HALF_PLUS_TWO_SIGNATURES - plain:
        signature = load.signatures[name]
        assert signature.examples_input == "inputs" and signature.inputs == {}
        assert [(f.key, f.port) for f in signature.parser.features] == [("x", "x"), ("x2", None)]
    # Signatures computing the same tensors from the same inputs share one model.
    assert load.signatures["classify_x_to_y"].model is load.signatures["regress_x_to_y"].model


def test_examples_sent_to_a_signature_without_them_get_tensorflows_error():
    signature = _load("half_plus_two/00000123").signatures["regress_x2_to_y3"]  # takes float x2, as TF Serving's
    with pytest.raises(ServingError) as caught:
        signature.parse_examples([{"x2": [1.0]}])
    assert caught.value.code == codes.INVALID_ARGUMENT
    assert str(caught.value) == "Expects arg[0] to be float but string is provided"


def test_tf1_exports_are_told_from_tf2_ones():
    meta_graph = read_meta_graph(FIXTURES / "half_plus_two" / "00000123")
    assert is_tf1(meta_graph)
    meta_graph.object_graph_def.SetInParent()  # what tf.saved_model.save always writes
    assert not is_tf1(meta_graph)


def test_a_defaulted_feature_may_be_missing_a_required_one_may_not():
    signature = _load("features/00000001").signatures["regress"]
    with_default = _run(signature, signature.parser.feeds([{"dense": [1.0, 2.0, 3.0]}]))
    explicit = _run(signature, signature.parser.feeds([{"dense": [1.0, 2.0, 3.0], "count": [1]}]))
    np.testing.assert_array_equal(with_default["outputs"], explicit["outputs"])
    # Context features fill what the examples lack; an example's own value wins.
    context = _run(signature, signature.parser.feeds([{"dense": [1.0, 2.0, 3.0]}], context={"count": [1]}))
    np.testing.assert_array_equal(context["outputs"], explicit["outputs"])


@pytest.mark.parametrize(
    "examples, message",
    [
        ([], "Input is empty."),
        ([{"x": [[1.0, 2.0]]}], "Key: x, Index: 0.  Feature values must be numbers or strings"),
        ([{"x": [{"a": 1}]}], "Key: x, Index: 0.  Feature values must be numbers or strings"),
        ([{"x": [1.0]}, {"x": list(range(100000))}], "Values size: 100000 but output shape: [1]"),
        ([{"x": ["text"]}], "Data type: string but expected type: float"),
        ([{"x": [1.0], "x2": [b"\xff"]}], "Key: x2, Index: 0.  Data types don't match"),
    ],
)
def test_hostile_decoded_examples_are_refused_clearly(examples, message):
    signature = _load("half_plus_two/00000123").signatures["regress_x_to_y"]
    with pytest.raises(ServingError) as caught:
        signature.parser.feeds(examples)
    assert caught.value.code == codes.INVALID_ARGUMENT
    assert message in str(caught.value)


def test_hostile_serialized_examples_are_refused_clearly():
    signature = _load("features/00000001").signatures["classify"]
    blobs = np.array([_serialized({"dense": [1.0, 2.0, 3.0]}), b"\xff\xff\xff not a proto"], dtype=object)
    with pytest.raises(ServingError) as caught:
        signature.feeds({"inputs": blobs})
    assert caught.value.code == codes.INVALID_ARGUMENT
    assert str(caught.value) == "Could not parse example input, value: element 1"
    too_big = _serialized({"dense": [1.0, 2.0, 3.0], "count": [1 << 62, 5]})
    with pytest.raises(ServingError, match=r"Key: count, Index: 0\.  Number of int64 values != expected"):
        signature.feeds({"inputs": np.array([too_big], dtype=object)})
    with pytest.raises(ServingError, match="Values do not fit int64"):
        signature.parser.feeds([{"dense": [1.0, 2.0, 3.0], "count": [1 << 70]}])


def _copy_with_signatures(tmp_path: Path, edit) -> Path:
    """A copy of half_plus_two/00000123 whose MetaGraphDef `edit` has changed."""
    source = FIXTURES / "half_plus_two" / "00000123"
    target = tmp_path / "00000123"
    shutil.copytree(source, target)
    saved = saved_model_pb2.SavedModel.FromString((source / "saved_model.pb").read_bytes())
    edit(saved.meta_graphs[0])
    (target / "saved_model.pb").write_bytes(saved.SerializeToString())
    return target


def test_a_signature_that_cannot_be_served_is_refused_by_name_and_the_rest_load(tmp_path):
    def edit(meta_graph):
        signatures = meta_graph.signature_def
        signatures["missing_tensor"].CopyFrom(signatures["serving_default"])
        signatures["missing_tensor"].outputs["y"].name = "nope:0"
        # y3 needs x2, parsed from tf_example, which this signature does not take.
        signatures["foreign_examples"].CopyFrom(signatures["serving_default"])
        signatures["foreign_examples"].outputs["y"].name = "y3:0"
        signatures["sparse"].CopyFrom(signatures["serving_default"])
        signatures["sparse"].outputs["y"].coo_sparse.values_tensor_name = "y:0"
        # The serialized examples themselves, not parsed: a string tensor in and out.
        signatures["strings"].CopyFrom(signatures["regress_x_to_y"])
        signatures["strings"].outputs["outputs"].CopyFrom(signatures["strings"].inputs["inputs"])

    load = load_tf1_signatures(_copy_with_signatures(tmp_path, edit))
    assert set(load.signatures) == HALF_PLUS_TWO_SIGNATURES
    assert load.refused == {
        "missing_tensor": "the graph reads tensor nope:0, which is not in the graph",
        "foreign_examples": "ParseExample parses tf.Examples that are not one of its string inputs",
        "sparse": "output 'y' is a sparse or composite tensor, which is not served",
        "strings": "string tensors (inputs) are not run on OpenVINO",
    }
    y = _run(load.signatures["serving_default"], {"x": np.array([[4.0]], np.float32)})["y"]
    np.testing.assert_allclose(y, [[4.0]])


def test_a_model_with_no_servable_signature_fails_to_load_saying_why(tmp_path):
    def edit(meta_graph):
        for signature in meta_graph.signature_def.values():
            for info in signature.outputs.values():
                info.name = "nope:0"

    with pytest.raises(LoadError) as caught:
        load_tf1_signatures(_copy_with_signatures(tmp_path, edit))
    assert caught.value.code == codes.FAILED_PRECONDITION
    assert "no servable signature" in str(caught.value)
    assert "serving_default: the graph reads tensor nope:0" in str(caught.value)


def test_a_missing_or_corrupt_saved_model_is_a_load_error(tmp_path):
    with pytest.raises(LoadError) as caught:
        load_tf1_signatures(tmp_path)
    assert caught.value.code == codes.NOT_FOUND
    (tmp_path / "saved_model.pb").write_bytes(b"\x0a\xff\xff\xff\xff garbage")
    with pytest.raises(LoadError, match="not a SavedModel"):
        load_tf1_signatures(tmp_path)


def test_the_variables_come_from_the_checkpoint_not_the_initializers(tmp_path):
    def edit(meta_graph):
        for node in meta_graph.graph_def.node:
            if node.name.endswith("initial_value"):
                node.attr["value"].tensor.float_val[:] = [100.0]

    load = load_tf1_signatures(_copy_with_signatures(tmp_path, edit))
    y = _run(load.signatures["serving_default"], {"x": np.array([[1.0]], np.float32)})["y"]
    np.testing.assert_allclose(y, [[2.5]])  # 0.5 * 1 + 2, as saved
