"""The built-in model server's REST API (8501), as TF Serving documents it: predict in
row and columnar form, b64 images, classify/regress, status and metadata, and
TF Serving-style errors that leave everything else serving."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.harness.serving_support import (
    Server,
    copy_builtin,
    echo_model,
    image_model,
    jpeg_bytes,
    predict_half_plus_two,
    write_config,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("rest")
    models = root / "models"
    hpt = copy_builtin(models, "half_plus_two")
    resnet = copy_builtin(models, "resnet")
    image_model(models / "pixels_nhwc" / "1", "NHWC", np.uint8)
    image_model(models / "pixels_nchw" / "1", "NCHW", np.float32)
    echo_model(models / "echo" / "1")
    config = root / "models.config"
    write_config(config, [
        {"name": "half_plus_two", "base_path": hpt, "extra": ['version_labels { key: "stable" value: 1 }']},
        {"name": "resnet", "base_path": resnet},
        {"name": "pixels_nhwc", "base_path": models / "pixels_nhwc"},
        {"name": "pixels_nchw", "base_path": models / "pixels_nchw"},
        {"name": "echo", "base_path": models / "echo"},
    ])
    s = Server(config).start()
    s.models = models
    for name in ("half_plus_two", "resnet", "pixels_nhwc", "pixels_nchw", "echo"):
        s.wait_available(name)
    yield s
    assert s.stop() == 0


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def test_seed_request_returns_half_plus_two(server):
    assert predict_half_plus_two(server) == (200, [2.5, 3.0, 4.5])


def test_row_and_columnar_forms_and_addressing(server):
    assert server.post("/v1/models/half_plus_two:predict", {"instances": [[1.0], [2.0]]}) == (
        200, {"predictions": [[2.5], [3.0]]})
    assert server.post("/v1/models/half_plus_two:predict", {"instances": [{"x": 1.0}, {"x": 3.0}]}) == (
        200, {"predictions": [2.5, 3.5]})
    assert server.post("/v1/models/half_plus_two:predict", {"inputs": {"x": [[1.0, 2.0]]}}) == (
        200, {"outputs": [[2.5, 3.0]]})
    assert server.post("/v1/models/half_plus_two:predict", {"inputs": 4.0}) == (200, {"outputs": 4.0})
    assert server.post("/v1/models/half_plus_two/versions/1:predict",
                       {"signature_name": "serving_default", "instances": [6]}) == (200, {"predictions": [5.0]})
    assert server.post("/v1/models/half_plus_two/labels/stable:predict", {"instances": [0.0]}) == (
        200, {"predictions": [2.0]})


def test_jpeg_and_png_as_b64_give_resnet_class_scores(server):
    import io

    import onnxruntime as ort
    from PIL import Image

    # The oracle: ONNX Runtime run directly on the same model file with the same pixels
    # (a lossless PNG of the model's own size, so no decoding or resizing is involved).
    pixels = np.random.default_rng(7).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, "PNG")
    session = ort.InferenceSession(str(server.models / "resnet" / "1" / "model.onnx"))
    probabilities, classes = session.run(["probabilities", "classes"], {"image_bytes": pixels[None]})
    status, doc = server.post("/v1/models/resnet:predict",
                              {"instances": [b64(png.getvalue()), b64(jpeg_bytes()), b64(jpeg_bytes(64, 48, fmt="PNG"))]})
    assert status == 200, doc
    assert len(doc["predictions"]) == 3
    np.testing.assert_allclose(doc["predictions"][0]["probabilities"], probabilities[0], rtol=1e-4, atol=1e-8)
    assert doc["predictions"][0]["classes"] == int(classes[0])
    for row in doc["predictions"][1:]:  # decoded and resized by the server: well-formed scores
        assert len(row["probabilities"]) == 1000 and abs(sum(row["probabilities"]) - 1) < 1e-3
    status, doc = server.post("/v1/models/resnet:predict", {"inputs": {"image_bytes": [b64(jpeg_bytes())]}})
    assert status == 200 and len(doc["outputs"]["probabilities"][0]) == 1000


@pytest.mark.parametrize("model", ["pixels_nhwc", "pixels_nchw"])
def test_images_are_decoded_and_resized_to_the_input(server, model):
    # A 60x40 PNG resized to the model's 6x4 input: every pixel keeps its colour.
    status, doc = server.post(f"/v1/models/{model}:predict",
                              {"instances": [b64(jpeg_bytes(60, 40, (10, 100, 250), "PNG"))]})
    assert status == 200, doc
    assert doc["predictions"] == [[10.0, 100.0, 250.0]]


def test_classify_and_regress_signatures(server):
    assert server.post("/v1/models/half_plus_two:classify", {
        "signature_name": "classify_x_to_y", "examples": [{"x": 1.0}, {"x": 3.0}]}) == (
        200, {"results": [[["", 2.5]], [["", 3.5]]]})
    assert server.post("/v1/models/half_plus_two:regress", {
        "signature_name": "regress_x_to_y", "examples": [{"x": 2.0}, {"x": 4}]}) == (200, {"results": [3.0, 4.0]})
    assert server.post("/v1/models/half_plus_two:regress", {
        "signature_name": "regress_x_to_y", "context": {"x": 10.0}, "examples": [{}]}) == (200, {"results": [7.0]})
    status, doc = server.post("/v1/models/half_plus_two:classify", {"examples": [{"x": 1.0}]})
    assert status == 400 and "classification signature" in doc["error"]
    status, doc = server.post("/v1/models/resnet:regress", {"examples": [{"x": 1.0}]})
    assert status == 400


def test_model_status_is_tf_serving_json(server):
    status, doc = server.get("/v1/models/half_plus_two")
    assert status == 200
    assert doc == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert server.get("/v1/models/half_plus_two/versions/1")[0] == 200
    assert server.get("/v1/models/half_plus_two/labels/stable")[0] == 200
    assert server.get("/v1/models/half_plus_two/versions/9") == (
        404, {"error": "Could not find version 9 of model half_plus_two"})
    assert server.get("/v1/models/nope") == (404, {"error": "Could not find any versions of model nope"})


def test_metadata_lists_signatures_with_dtypes_and_shapes(server):
    status, doc = server.get("/v1/models/resnet/metadata")
    assert status == 200
    assert doc["model_spec"] == {"name": "resnet", "version": "1", "signature_name": ""}
    sig = doc["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    image = sig["inputs"]["image_bytes"]
    assert image["dtype"] == "DT_UINT8"
    assert [d["size"] for d in image["tensor_shape"]["dim"]] == ["-1", "224", "224", "3"]
    assert sig["outputs"]["probabilities"]["dtype"] == "DT_FLOAT"
    assert sig["outputs"]["classes"]["dtype"] == "DT_INT64"
    status, doc = server.get("/v1/models/half_plus_two/versions/1/metadata")
    sigs = doc["metadata"]["signature_def"]["signature_def"]
    assert set(sigs) == {"serving_default", "classify_x_to_y", "regress_x_to_y"}
    assert sigs["classify_x_to_y"]["inputs"]["inputs"]["dtype"] == "DT_STRING"
    assert sigs["regress_x_to_y"]["method_name"] == "tensorflow/serving/regress"


@pytest.mark.parametrize("path, body, code, message", [
    ("/v1/models/half_plus_two:predict", b'{"instances": [1.0, 2.0', 400, "JSON Parse error"),
    ("/v1/models/half_plus_two:predict", b"", 400, "JSON Parse error"),
    ("/v1/models/half_plus_two:predict", b"[1.0]", 400, "Is not object"),
    ("/v1/models/half_plus_two:predict", b'{"instances": ["abc"]}', 400, "expects float32 but string"),
    ("/v1/models/half_plus_two:predict", b'{"instances": [[1.0], [2.0, 3.0]]}', 400, "dense"),
    ("/v1/models/half_plus_two:predict", b'{"instances": [true]}', 400, "not of expected type"),
    ("/v1/models/half_plus_two:predict", b'{"values": [1.0]}', 400, "Missing 'inputs' or 'instances' key"),
    ("/v1/models/half_plus_two:predict", b'{"instances": []}', 400, "No values"),
    ("/v1/models/half_plus_two:predict", b'{"signature_name": "nope", "instances": [1.0]}', 400,
     'Serving signature name: "nope" not found'),
    ("/v1/models/resnet:predict", b'{"instances": [[1, 2, 3]]}', 400, "expects shape [-1,224,224,3]"),
    ("/v1/models/resnet:predict", b'{"instances": [{"b64": "bm90IGFuIGltYWdl"}]}', 400, "JPEG or PNG"),
    ("/v1/models/nope:predict", b'{"instances": [1.0]}', 404, "Servable not found for request: Latest(nope)"),
    ("/v1/models/half_plus_two/versions/7:predict", b'{"instances": [1.0]}', 404,
     "Servable not found for request: Specific(half_plus_two, 7)"),
    ("/v1/models/half_plus_two/labels/canary:predict", b'{"instances": [1.0]}', 400,
     "Unrecognized servable version label: canary"),
    ("/v1/models/half_plus_two:explain", b'{"instances": [1.0]}', 400, "Malformed request"),
])
def test_bad_requests_get_tf_serving_errors_and_serving_goes_on(server, path, body, code, message):
    status, doc = server.post(path, raw=body)
    assert status == code, doc
    assert set(doc) == {"error"} and message in doc["error"], doc
    assert predict_half_plus_two(server) == (200, [2.5, 3.0, 4.5])


def test_large_batch_and_outputs(server):
    values = np.linspace(-5, 5, 5000, dtype=np.float32)
    status, doc = server.post("/v1/models/half_plus_two:predict", {"instances": values.tolist()})
    assert status == 200
    np.testing.assert_allclose(doc["predictions"], values * 0.5 + 2, rtol=1e-6)


def test_string_tensors_and_bytes_outputs(server):
    status, doc = server.post("/v1/models/echo:predict", {"instances": ["héllo", b64("wörld".encode())]})
    assert status == 200, doc
    assert doc["predictions"] == [{"text_out": "héllo", "text_bytes": b64("héllo".encode())},
                                  {"text_out": "wörld", "text_bytes": b64("wörld".encode())}]
    status, doc = server.post("/v1/models/echo:predict", {"inputs": {"text": [1.5]}})
    assert status == 400 and "string" in doc["error"]
    status, doc = server.post("/v1/models/echo:predict", {"instances": [b64(b"\xff\xfe")]})
    assert status == 400 and "UTF-8" in doc["error"]
