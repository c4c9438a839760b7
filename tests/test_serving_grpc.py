"""The built-in model server's gRPC API (8500): TF Serving's PredictionService and
ModelService over the wire, with the same numbers as REST."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from agent.serving import tensors
from agent.serving.protos import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tests.harness.node import wait_for
from tests.harness.serving_support import Server, copy_builtin, jpeg_bytes, predict_half_plus_two, write_config

OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpc")
    models = root / "models"
    copy_builtin(models, "half_plus_two")
    copy_builtin(models, "resnet")
    config = root / "models.config"
    write_config(config, [{"name": "half_plus_two", "base_path": models / "half_plus_two"},
                          {"name": "resnet", "base_path": models / "resnet"}])
    s = Server(config, models_root=models).start()
    s.models = models
    s.wait_available("half_plus_two")
    s.wait_available("resnet")
    yield s
    assert s.stop() == 0


@pytest.fixture
def channel(server):
    with grpc.insecure_channel(server.grpc_target, options=OPTIONS) as ch:
        yield ch


def predict_request(model: str, inputs: dict, signature: str = "", version: int | None = None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for alias, proto in inputs.items():
        request.inputs[alias].CopyFrom(proto)
    return request


def hand_tensor(array: np.ndarray, packed: bool = False):
    """A TensorProto built field by field, as TF Serving's docs describe it (not by the
    project's own tensor code): float32 values in float_val, or raw bytes in
    tensor_content; uint8 raw bytes; strings in string_val."""
    from agent.serving.protos import tensor_pb2, types_pb2

    proto = tensor_pb2.TensorProto()
    for n in array.shape:
        proto.tensor_shape.dim.add(size=n)
    if array.dtype == object:
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(array.ravel().tolist())
    elif array.dtype == np.uint8:
        proto.dtype = types_pb2.DT_UINT8
        proto.tensor_content = array.tobytes()
    else:
        proto.dtype = types_pb2.DT_FLOAT
        if packed:
            proto.tensor_content = array.astype("<f4").tobytes()
        else:
            proto.float_val.extend(array.ravel().tolist())
    return proto


def hand_floats(proto) -> np.ndarray:
    """A float TensorProto read field by field: its values in its shape."""
    shape = [d.size for d in proto.tensor_shape.dim]
    values = np.frombuffer(proto.tensor_content, "<f4") if proto.tensor_content else np.array(proto.float_val, "f4")
    return values.reshape(shape)


def test_predict_returns_the_same_numbers_as_rest(server, channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    x = hand_tensor(np.array([1.0, 2.0, 5.0], dtype=np.float32))
    response = stub.Predict(predict_request("half_plus_two", {"x": x}))
    assert hand_floats(response.outputs["y"]).tolist() == predict_half_plus_two(server)[1] == [2.5, 3.0, 4.5]
    assert response.model_spec.name == "half_plus_two"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    # tensor_content (what tf.make_tensor_proto sends for big arrays) works the same.
    packed = hand_tensor(np.array([[1.0], [2.0]], dtype=np.float32), packed=True)
    response = stub.Predict(predict_request("half_plus_two", {"x": packed}, version=1))
    assert hand_floats(response.outputs["y"]).tolist() == [[2.5], [3.0]]


def test_resnet_takes_jpeg_strings_and_raw_pixel_batches(server, channel):
    import onnxruntime as ort

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    jpeg = hand_tensor(np.array([jpeg_bytes()], dtype=object))
    response = stub.Predict(predict_request("resnet", {"image_bytes": jpeg}))
    assert hand_floats(response.outputs["probabilities"]).shape == (1, 1000)
    # Raw pixels: the numbers are ONNX Runtime's, run directly on the same model file.
    pixels = np.random.default_rng(1).integers(0, 255, (2, 224, 224, 3), dtype=np.uint8)
    response = stub.Predict(predict_request("resnet", {"image_bytes": hand_tensor(pixels)}))
    session = ort.InferenceSession(str(server.models / "resnet" / "1" / "model.onnx"))
    probabilities, classes = session.run(["probabilities", "classes"], {"image_bytes": pixels})
    np.testing.assert_allclose(hand_floats(response.outputs["probabilities"]), probabilities, rtol=1e-4, atol=1e-8)
    got_classes = response.outputs["classes"]
    assert [d.size for d in got_classes.tensor_shape.dim] == [2]
    assert (list(got_classes.int64_val) or np.frombuffer(got_classes.tensor_content, "<i8").tolist()) == classes.tolist()


def test_predict_errors_carry_tf_serving_codes(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    x = tensors.from_ndarray(np.array([1.0], dtype=np.float32))
    cases = [
        (predict_request("nope", {"x": x}), grpc.StatusCode.NOT_FOUND, "Servable not found"),
        (predict_request("half_plus_two", {"x": x}, version=3), grpc.StatusCode.NOT_FOUND, "Specific(half_plus_two, 3)"),
        (predict_request("half_plus_two", {"x": tensors.from_ndarray(np.array([1.0]))}),
         grpc.StatusCode.INVALID_ARGUMENT, "expects float32 but float64"),
        (predict_request("half_plus_two", {"z": x}), grpc.StatusCode.INVALID_ARGUMENT, "Missing but required: {x}"),
        (predict_request("half_plus_two", {"x": x}, signature="nope"), grpc.StatusCode.INVALID_ARGUMENT, "not found"),
        (predict_request("resnet", {"image_bytes": tensors.from_ndarray_content(np.zeros((1, 3, 224, 224), np.uint8))}),
         grpc.StatusCode.INVALID_ARGUMENT, "expects shape"),
    ]
    label = predict_request("half_plus_two", {"x": x})
    label.model_spec.version_label = "canary"
    cases.append((label, grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label"))
    for request, code, text in cases:
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(request)
        assert err.value.code() == code and text in err.value.details(), err.value.details()


def test_classify_and_regress(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "classify_x_to_y"
    for value in (1.0, 3.0):
        request.input.example_list.examples.add().features.feature["x"].float_list.value.append(value)
    result = stub.Classify(request).result
    assert [[(c.label, c.score) for c in cl.classes] for cl in result.classifications] == [[("", 2.5)], [("", 3.5)]]
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "regress_x_to_y"
    request.input.example_list_with_context.context.features.feature["x"].float_list.value.append(4.0)
    request.input.example_list_with_context.examples.add()
    assert [r.value for r in stub.Regress(request).result.regressions] == [4.0]


def test_model_metadata_and_status(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "half_plus_two"
    response = stub.GetModelMetadata(request)
    assert response.model_spec.version.value == 1
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(sig_map)
    assert set(sig_map.signature_def) == {"serving_default", "classify_x_to_y", "regress_x_to_y"}
    assert sig_map.signature_def["serving_default"].inputs["x"].dtype == 1  # DT_FLOAT

    models = model_service_pb2_grpc.ModelServiceStub(channel)
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "resnet"
    (status,) = models.GetModelStatus(status_request).model_version_status
    assert (status.version, status.state) == (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    status_request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as err:
        models.GetModelStatus(status_request)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reload_is_refused_on_the_network_port(server, channel):
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    request = model_management_pb2.ReloadConfigRequest()
    request.config.model_config_list.config.add(name="gone", base_path=str(server.models / "half_plus_two"))
    with pytest.raises(grpc.RpcError) as err:
        models.HandleReloadConfigRequest(request)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "local admin socket" in err.value.details()
    # Nothing changed: the served models are still there.
    assert predict_half_plus_two(server) == (200, [2.5, 3.0, 4.5])
    assert server.states("gone") == {}


def test_reload_config_request_switches_models_on_the_admin_socket(server):
    import stat

    assert stat.S_IMODE(server.admin_socket.stat().st_mode) == 0o600
    with grpc.insecure_channel(f"unix:{server.admin_socket}", options=OPTIONS) as admin:
        models = model_service_pb2_grpc.ModelServiceStub(admin)
        request = model_management_pb2.ReloadConfigRequest()
        config = request.config.model_config_list.config.add()
        config.name, config.base_path, config.model_platform = "hpt", str(server.models / "half_plus_two"), "tensorflow"
        config = request.config.model_config_list.config.add()
        config.name, config.base_path = "resnet", str(server.models / "resnet")
        assert models.HandleReloadConfigRequest(request).status.error_code == 0
        # The reply comes once the new model is loaded and the dropped one unloaded.
        assert predict_half_plus_two(server, "hpt")[0] == 200
        assert predict_half_plus_two(server, "half_plus_two")[0] == 404
        request.config.model_config_list.config[0].name = "half_plus_two"
        assert models.HandleReloadConfigRequest(request).status.error_code == 0
        assert predict_half_plus_two(server) == (200, [2.5, 3.0, 4.5])
        bad = model_management_pb2.ReloadConfigRequest()
        bad.config.model_config_list.config.add(name="x")
        response = models.HandleReloadConfigRequest(bad)
        assert response.status.error_code == 3 and "base_path" in response.status.error_message
        # A base_path outside the models root, directly or through "..", is refused whole.
        for outside in ("/etc", str(server.models / ".." / "..")):
            escape = model_management_pb2.ReloadConfigRequest()
            escape.CopyFrom(request)
            escape.config.model_config_list.config[1].base_path = outside
            response = models.HandleReloadConfigRequest(escape)
            assert response.status.error_code == 3, outside
            assert "outside the models root" in response.status.error_message
        assert server.states("resnet") == {1: "AVAILABLE"}
        assert predict_half_plus_two(server) == (200, [2.5, 3.0, 4.5])


def test_predict_on_a_classify_signature_takes_serialized_examples(channel):
    from agent.serving.protos import example_pb2

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    examples = []
    for value in (2.0, 6.0):
        example = example_pb2.Example()
        example.features.feature["x"].float_list.value.append(value)
        examples.append(example.SerializeToString())
    blobs = tensors.from_ndarray(np.array(examples, dtype=object))
    response = stub.Predict(predict_request("half_plus_two", {"inputs": blobs}, signature="classify_x_to_y"))
    np.testing.assert_array_equal(tensors.to_ndarray(response.outputs["scores"]), [[3.0], [5.0]])


def test_a_models_config_file_naming_a_path_outside_the_models_root_is_refused(server):
    original = server.config.read_text()
    log_before = server.log.read_text()
    try:
        write_config(server.config, [{"name": "half_plus_two", "base_path": server.models / "half_plus_two"},
                                     {"name": "passwd", "base_path": "/etc"}])
        wait_for(lambda: server.log.read_text()[len(log_before):].count("outside the models root"), 10,
                 what="the config poll to refuse the file")
        assert server.states("passwd") == {}
        assert predict_half_plus_two(server) == (200, [2.5, 3.0, 4.5])
    finally:
        # Put the file back and wait until the poll has read it, so that it cannot undo
        # a later test's reload.
        restored = len(server.log.read_text())
        server.config.write_text(original)
        wait_for(lambda: "models config applied" in server.log.read_text()[restored:], 10,
                 what="the restored config to be read")


def test_a_model_being_loaded_answers_unavailable_never_not_found(server, channel):
    """During a switch a node has the new model configured before it is loaded: it
    answers UNAVAILABLE (REST 503), which Envoy retries on a node that has it."""
    import threading
    import time

    copy_builtin(server.models, "resnet", as_name="resnet_b")
    with grpc.insecure_channel(f"unix:{server.admin_socket}", options=OPTIONS) as admin:
        models = model_service_pb2_grpc.ModelServiceStub(admin)
        request = model_management_pb2.ReloadConfigRequest()
        for name in ("half_plus_two", "resnet", "resnet_b"):
            request.config.model_config_list.config.add(name=name, base_path=str(server.models / name))
        answer = {}
        reload = threading.Thread(target=lambda: answer.update(r=models.HandleReloadConfigRequest(request, timeout=60)))
        reload.start()
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        status_stub = model_service_pb2_grpc.ModelServiceStub(channel)
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = "resnet_b"
        def known() -> bool:
            try:
                return bool(status_stub.GetModelStatus(status_request).model_version_status)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.NOT_FOUND, e  # not configured yet
                return False

        wait_for(known, 30, 0.001, "resnet_b known to the server")
        pixels = tensors.from_ndarray_content(np.zeros((1, 224, 224, 3), dtype=np.uint8))
        seen = []
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, (server.states("resnet_b"), seen[-10:])
            for version in (None, 1):
                try:
                    stub.Predict(predict_request("resnet_b", {"image_bytes": pixels}, version=version), timeout=30)
                    seen.append("OK")
                except grpc.RpcError as e:
                    seen.append(e.code().name)
                seen.append(server.post("/v1/models/resnet_b:predict", {"instances": [[[[0, 0, 0]]]]})[0])
            if "AVAILABLE" in server.states("resnet_b").values():
                break
        reload.join()
    assert answer["r"].status.error_code == 0
    assert "NOT_FOUND" not in seen and 404 not in seen, seen
    assert "UNAVAILABLE" in seen and 503 in seen, seen  # the load was caught in progress
