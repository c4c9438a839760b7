"""The project's own .proto files speak TF Serving's wire protocol: package, service,
message names and field numbers match, and TensorProto round-trips every dtype the
runtimes use, both in typed fields and in tensor_content."""

from __future__ import annotations

import numpy as np
import pytest

from agent.serving import tensors
from agent.serving.protos import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_server_config_pb2,
    model_service_pb2,
    predict_pb2,
    prediction_service_pb2,
    tensor_pb2,
    types_pb2,
)

# (message, field, number): the facts of the wire format clients rely on.
FIELDS = [
    (tensor_pb2.TensorProto, "dtype", 1), (tensor_pb2.TensorProto, "tensor_shape", 2),
    (tensor_pb2.TensorProto, "tensor_content", 4), (tensor_pb2.TensorProto, "float_val", 5),
    (tensor_pb2.TensorProto, "double_val", 6), (tensor_pb2.TensorProto, "int_val", 7),
    (tensor_pb2.TensorProto, "string_val", 8), (tensor_pb2.TensorProto, "int64_val", 10),
    (tensor_pb2.TensorProto, "bool_val", 11), (tensor_pb2.TensorProto, "half_val", 13),
    (tensor_pb2.TensorProto, "uint32_val", 16), (tensor_pb2.TensorProto, "uint64_val", 17),
    (model_pb2.ModelSpec, "name", 1), (model_pb2.ModelSpec, "version", 2),
    (model_pb2.ModelSpec, "signature_name", 3), (model_pb2.ModelSpec, "version_label", 4),
    (predict_pb2.PredictRequest, "model_spec", 1), (predict_pb2.PredictRequest, "inputs", 2),
    (predict_pb2.PredictRequest, "output_filter", 3), (predict_pb2.PredictResponse, "outputs", 1),
    (predict_pb2.PredictResponse, "model_spec", 2),
    (classification_pb2.ClassificationResponse, "result", 1),
    (get_model_metadata_pb2.GetModelMetadataResponse, "metadata", 2),
    (get_model_status_pb2.ModelVersionStatus, "state", 2),
    (model_server_config_pb2.ModelConfig, "model_version_policy", 7),
    (model_server_config_pb2.ModelConfig, "version_labels", 8),
]


@pytest.mark.parametrize("message, field, number", FIELDS)
def test_field_numbers_are_tf_servings(message, field, number):
    assert message.DESCRIPTOR.fields_by_name[field].number == number


def test_service_and_type_names_are_tf_servings():
    predict = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"]
    assert predict.full_name == "tensorflow.serving.PredictionService"
    assert {m.name for m in predict.methods} >= {"Predict", "Classify", "Regress", "GetModelMetadata"}
    models = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"]
    assert {m.name for m in models.methods} == {"GetModelStatus", "HandleReloadConfigRequest"}
    assert tensor_pb2.TensorProto.DESCRIPTOR.full_name == "tensorflow.TensorProto"
    assert get_model_metadata_pb2.SignatureDefMap.DESCRIPTOR.full_name == "tensorflow.serving.SignatureDefMap"
    assert get_model_status_pb2.ModelVersionStatus.AVAILABLE == 30


def test_hand_encoded_predict_request_decodes():
    # model_spec{name:"m"} inputs{key:"x" value{dtype:DT_FLOAT float_val:[2.0]}}, encoded by hand.
    tensor = bytes([0x08, 0x01, 0x2A, 0x04]) + np.float32(2.0).tobytes()
    entry = b"\x0a\x01x" + b"\x12" + bytes([len(tensor)]) + tensor
    wire = b"\x0a\x03\x0a\x01m" + b"\x12" + bytes([len(entry)]) + entry
    request = predict_pb2.PredictRequest.FromString(wire)
    assert request.model_spec.name == "m"
    assert request.inputs["x"].dtype == types_pb2.DT_FLOAT
    assert list(request.inputs["x"].float_val) == [2.0]


# Every element type ONNX Runtime (and OpenVINO) hands over.
DTYPES = [np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64,
          np.uint8, np.uint16, np.uint32, np.uint64, np.bool_]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("encode", [tensors.from_ndarray, tensors.from_ndarray_content], ids=["typed", "content"])
def test_tensor_proto_round_trips(dtype, encode):
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    values = np.array([[info.min, 0, info.max], [1, 2, 3]] if info else [[-1.5, 0, 2.25], [1, 0, 1]], dtype=dtype)
    wire = encode(values).SerializeToString()
    back = tensors.to_ndarray(tensor_pb2.TensorProto.FromString(wire))
    assert back.dtype == values.dtype and back.shape == values.shape
    np.testing.assert_array_equal(back, values)


def test_string_tensors_round_trip_bytes():
    values = np.array([[b"a", b"\xff\x00"], [b"", b"long" * 100]], dtype=object)
    back = tensors.to_ndarray(tensor_pb2.TensorProto.FromString(tensors.from_ndarray(values).SerializeToString()))
    assert back.shape == (2, 2) and back.tolist() == values.tolist()


def test_short_value_lists_fill_like_tensorflow():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, int_val=[1, 7])
    proto.tensor_shape.dim.add(size=4)
    assert tensors.to_ndarray(proto).tolist() == [1, 7, 7, 7]
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=b"\x00" * 3)
    proto.tensor_shape.dim.add(size=1)
    with pytest.raises(Exception, match="tensor_content has 3 bytes"):
        tensors.to_ndarray(proto)


def test_saved_model_and_prediction_log_protos_are_tensorflows():
    """saved_model.pb and tf_serving_warmup_requests are read with these: TF's names and numbers."""
    from agent.serving.protos import meta_graph_pb2, prediction_log_pb2, saved_model_pb2

    facts = [
        (saved_model_pb2.SavedModel, "saved_model_schema_version", 1), (saved_model_pb2.SavedModel, "meta_graphs", 2),
        (meta_graph_pb2.MetaGraphDef, "meta_info_def", 1), (meta_graph_pb2.MetaGraphDef, "signature_def", 5),
        (meta_graph_pb2.MetaGraphDef.MetaInfoDef, "tags", 4), (meta_graph_pb2.SignatureDef, "method_name", 3),
        (prediction_log_pb2.PredictionLog, "classify_log", 2), (prediction_log_pb2.PredictionLog, "regress_log", 3),
        (prediction_log_pb2.PredictionLog, "predict_log", 6), (prediction_log_pb2.PredictLog, "request", 1),
    ]
    for message, field, number in facts:
        assert message.DESCRIPTOR.fields_by_name[field].number == number, (message, field)
    assert saved_model_pb2.SavedModel.DESCRIPTOR.full_name == "tensorflow.SavedModel"
    assert prediction_log_pb2.PredictionLog.DESCRIPTOR.full_name == "tensorflow.serving.PredictionLog"
