"""The built-in model server speaks the Open Inference Protocol (KServe v2) on its REST
and gRPC ports, beside TF Serving's API: Triton's own client (tritonclient, HTTP and
gRPC) gets correct answers, metadata and readiness, and hostile v2 requests get the
protocol's errors while the server keeps serving.

This process loads tritonclient's copy of inference.* messages; the project's own
grpc_service_pb2 defines the same names, so it is only ever imported by the server
subprocess (or a helper subprocess), never here."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from google.protobuf import descriptor_pb2
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from agent.serving.builtin_models import digits_data
from tests.harness.node import http, wait_for
from tests.harness.serving_support import Server, copy_builtin, echo_model, predict_half_plus_two, write_config

X = np.array([1.0, 2.0, 5.0], dtype=np.float32)
EXPECTED = [2.5, 3.0, 4.5]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("oip")
    models = root / "models"
    copy_builtin(models, "half_plus_two")
    copy_builtin(models, "digits")
    echo_model(models / "echo" / "1")
    config = root / "models.config"
    s = Server(config)
    s.models = [{"name": n, "base_path": models / n} for n in ("half_plus_two", "digits", "echo")]
    write_config(config, s.models)
    s.start()
    for name in ("half_plus_two", "digits", "echo"):
        s.wait_available(name)
    yield s
    assert s.stop() == 0


@pytest.fixture
def rest(server):
    client = thttp.InferenceServerClient(f"{server.ip}:8501", network_timeout=60)
    yield client
    client.close()


@pytest.fixture
def rpc(server):
    client = tgrpc.InferenceServerClient(f"{server.ip}:8500")
    yield client
    client.close()


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def v2(server, method: str, path: str, doc=None, raw: bytes | None = None, headers: dict | None = None):
    """One raw v2 REST call: (status, JSON document)."""
    import urllib.error
    import urllib.request

    body = raw if raw is not None else (json.dumps(doc).encode() if doc is not None else None)
    req = urllib.request.Request(f"{server.rest}{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def http_input(name, array, datatype, binary=True):
    i = thttp.InferInput(name, list(array.shape), datatype)
    i.set_data_from_numpy(array, binary_data=binary)
    return i


def grpc_input(name, array, datatype):
    i = tgrpc.InferInput(name, list(array.shape), datatype)
    i.set_data_from_numpy(array)
    return i


def assert_still_serving(server, rest_client=None):
    """The server process is up and answers both APIs correctly."""
    assert server.proc.poll() is None, server.log.read_text()[-2000:]
    assert predict_half_plus_two(server) == (200, EXPECTED)
    status, doc = v2(server, "POST", "/v2/models/half_plus_two/infer",
                     {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": X.tolist()}]})
    assert status == 200 and doc["outputs"][0]["data"] == EXPECTED


# --- Triton's client, over HTTP and gRPC ------------------------------------------------


def test_tritonclient_http_infers_half_plus_two_in_binary_and_json(rest):
    result = rest.infer("half_plus_two", [http_input("x", X, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("y"), EXPECTED)
    assert result.get_response()["model_version"] == "1"
    # JSON tensors both ways, and a version named in the path.
    result = rest.infer("half_plus_two", [http_input("x", X.reshape(3, 1), "FP32", binary=False)], model_version="1",
                        outputs=[thttp.InferRequestedOutput("y", binary_data=False)], request_id="r-7")
    assert result.get_response() == {"model_name": "half_plus_two", "model_version": "1", "id": "r-7",
                                     "outputs": [{"name": "y", "datatype": "FP32", "shape": [3, 1], "data": EXPECTED}]}


def test_tritonclient_grpc_infers_half_plus_two(rpc):
    result = rpc.infer("half_plus_two", [grpc_input("x", X, "FP32")], request_id="g-1")
    np.testing.assert_array_equal(result.as_numpy("y"), EXPECTED)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("half_plus_two", "1", "g-1")


def test_health_and_metadata_over_both_transports(rest, rpc):
    assert rest.is_server_live() and rest.is_server_ready()
    assert rpc.is_server_live() and rpc.is_server_ready()
    assert rest.is_model_ready("half_plus_two") and rpc.is_model_ready("half_plus_two", "1")
    assert not rest.is_model_ready("no_such_model") and not rpc.is_model_ready("no_such_model")
    assert not rest.is_model_ready("half_plus_two", "7") and not rpc.is_model_ready("half_plus_two", "7")
    meta = rest.get_model_metadata("half_plus_two")
    assert meta == {"name": "half_plus_two", "versions": ["1"], "platform": "onnxruntime",
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}],
                    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]}
    digits = rpc.get_model_metadata("digits", "1", as_json=True)
    assert digits["inputs"] == [{"name": "images", "datatype": "FP32", "shape": ["-1", "64"]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in digits["outputs"]] == [
        ("probabilities", "FP32", ["-1", "10"]), ("classes", "INT64", ["-1"])]
    assert rest.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    assert rpc.get_server_metadata().name == "inference-agent"


def test_the_digits_classifier_recognises_held_back_digits(rest, rpc):
    _, _, held_x, held_y = digits_data()
    by_http = rest.infer("digits", [http_input("images", held_x, "FP32")],
                         outputs=[thttp.InferRequestedOutput("classes")]).as_numpy("classes")
    by_grpc = rpc.infer("digits", [grpc_input("images", held_x, "FP32")]).as_numpy("classes")
    np.testing.assert_array_equal(by_http, by_grpc)
    assert (by_http == held_y).mean() >= 0.90


def test_bytes_tensors_round_trip(rest, rpc):
    words = np.array([b"hello", "wörld".encode()], dtype=np.object_)
    for binary in (True, False):
        result = rest.infer("echo", [http_input("text", words, "BYTES", binary)],
                            outputs=[thttp.InferRequestedOutput("text_out", binary_data=binary)])
        # JSON BYTES come back as text, binary ones as bytes.
        assert [v if isinstance(v, bytes) else v.encode() for v in result.as_numpy("text_out").tolist()] == words.tolist()
    assert rpc.infer("echo", [grpc_input("text", words, "BYTES")]).as_numpy("text_bytes").tolist() == words.tolist()


def test_tf_serving_api_is_unchanged_beside_v2(server):
    assert predict_half_plus_two(server) == (200, EXPECTED)
    status, doc = server.get("/v1/models/digits/metadata")
    assert status == 200 and set(doc["metadata"]["signature_def"]["signature_def"]) == {"serving_default", "classify"}
    _, _, held_x, held_y = digits_data()
    status, doc = server.post("/v1/models/digits:classify", {"signature_name": "classify", "examples": [{"pixels": held_x[0].tolist()}]})
    assert status == 200, doc
    best = max(doc["results"][0], key=lambda pair: pair[1])
    assert best[0] == str(held_y[0]) and len(doc["results"][0]) == 10


def test_server_ready_follows_the_configured_models(server, rest, rpc, tmp_path):
    broken = tmp_path / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "1" / "model.onnx").write_bytes(b"not a model")
    write_config(server.config, server.models + [{"name": "broken", "base_path": broken}])
    try:
        wait_for(lambda: server.states("broken") == {1: "END"}, 30, what="broken model to fail")
        assert not rest.is_server_ready() and not rpc.is_server_ready()
        assert v2(server, "GET", "/v2/health/ready") == (503, {"error": "models not ready yet: broken"})
        assert not rest.is_model_ready("broken")
        assert rest.is_model_ready("half_plus_two")  # the others are not disturbed
    finally:
        write_config(server.config, server.models)
    wait_for(lambda: rest.is_server_ready(), 30, what="server ready again")


# --- hostile input ----------------------------------------------------------------------

HOSTILE_REST = [
    # (name, body or raw bytes, extra headers, expected status, words the error names)
    ("wrong datatype", {"inputs": [{"name": "x", "shape": [3], "datatype": "INT32", "data": [1, 2, 5]}]}, {}, 400,
     "expects float32 but int32"),
    ("unknown datatype", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP128", "data": [1]}]}, {}, 400,
     "unsupported datatype"),
    ("floats for an integer type", {"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [1.5]}]}, {},
     400, "not of expected type"),
    ("integer out of range", {"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [300]}]}, {}, 400,
     "out of range"),
    ("strings for numbers", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ["1"]}]}, {}, 400,
     "must be numbers"),
    ("shape longer than data", {"inputs": [{"name": "x", "shape": [5], "datatype": "FP32", "data": [1, 2]}]}, {}, 400,
     "needs 5 elements, data has 2"),
    ("shape shorter than data", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1, 2]}]}, {}, 400,
     "needs 1 elements, data has 2"),
    ("huge declared shape", {"inputs": [{"name": "x", "shape": [1 << 40, 1 << 40], "datatype": "FP32", "data": [1]}]},
     {}, 400, "more than the limit"),
    ("rank past the limit", {"inputs": [{"name": "x", "shape": [1] * 40, "datatype": "FP32", "data": [1]}]}, {}, 400,
     "rank 40"),
    ("negative dimension", {"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]}, {}, 400,
     "negative dimension"),
    ("data nested deeper than the shape", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                                                       "data": [[[[1]]]]}]}, {}, 400, "deeper than the shape"),
    ("deep JSON", None, {}, 400, "JSON Parse error"),
    ("no inputs", {"inputs": []}, {}, 400, "no inputs"),
    ("too many inputs", {"inputs": [{"name": f"i{i}", "shape": [1], "datatype": "FP32", "data": [1]}
                                    for i in range(65)]}, {}, 400, "at most 64"),
    ("an input twice", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}] * 2}, {}, 400,
     "more than once"),
    ("unknown input", {"inputs": [{"name": "z", "shape": [1], "datatype": "FP32", "data": [1]}]}, {}, 400,
     "Missing but required: {x}"),
    ("unknown output", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                        "outputs": [{"name": "nope"}]}, {}, 400, "output tensor alias not found"),
    ("shared memory", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                                   "parameters": {"shared_memory_region": "r"}}]}, {}, 400, "not supported"),
    ("not JSON", b"\x00\xff garbage", {}, 400, "JSON Parse error"),
    ("binary shape lying about its bytes", b'{"inputs": [{"name": "x", "shape": [1000000], "datatype": "FP32", '
     b'"parameters": {"binary_data_size": 12}}]}' + X.tobytes(), "header", 400, "needs 4000000 bytes, 12 were sent"),
    ("binary size past the body", b'{"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", '
     b'"parameters": {"binary_data_size": 1200}}]}' + X.tobytes(), "header", 400, "binary_data_size 1200"),
    ("binary bytes nobody claims", b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", '
     b'"parameters": {"binary_data_size": 4}}]}' + X.tobytes(), "header", 400, "binary bytes that no input claims"),
    ("header length past the body", b'{"inputs": []}', {"Inference-Header-Content-Length": "999999"}, 400,
     "Inference-Header-Content-Length"),
    ("BYTES element length lying", b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", '
     b'"parameters": {"binary_data_size": 8}}]}' + struct.pack("<I", 1 << 30) + b"abcd", "header", 400,
     "declares 1073741824 bytes"),
]


def _hostile_body(case):
    name, body, headers, _, _ = case
    if name == "deep JSON":
        return b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {}
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    if headers == "header":
        header_length = raw.index(b"}]}") + 3
        headers = {"Inference-Header-Content-Length": str(header_length)}
    return raw, headers


@pytest.mark.parametrize("case", HOSTILE_REST, ids=[c[0] for c in HOSTILE_REST])
def test_hostile_rest_input_gets_the_protocols_error(server, case):
    name, _, _, expected_status, words = case
    raw, headers = _hostile_body(case)
    model = "echo" if b'"text"' in raw else "half_plus_two"
    status, doc = v2(server, "POST", f"/v2/models/{model}/infer", raw=raw, headers=headers)
    assert status == expected_status, doc
    assert set(doc) == {"error"} and words in doc["error"], doc


def test_unknown_models_versions_and_paths(server):
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}
    status, doc = v2(server, "POST", "/v2/models/nope/infer", body)
    assert status == 404 and "nope" in doc["error"]
    status, doc = v2(server, "POST", "/v2/models/half_plus_two/versions/9/infer", body)
    assert status == 404 and "Specific(half_plus_two, 9)" in doc["error"]
    status, doc = v2(server, "GET", "/v2/models/half_plus_two/versions/latest")
    assert status == 400 and "non-negative integer" in doc["error"]
    status, doc = v2(server, "GET", "/v2/models/half_plus_two/versions/99999999999999999999999/ready")
    assert status == 400
    status, doc = v2(server, "GET", "/v2/repository/index")
    assert status == 404 and set(doc) == {"error"}
    status, doc = v2(server, "GET", "/v2/models/half_plus_two/infer")
    assert status == 404


def test_server_keeps_serving_after_hostile_rest_input(server):
    for case in HOSTILE_REST:
        raw, headers = _hostile_body(case)
        http("POST", f"{server.rest}/v2/models/half_plus_two/infer", raw, timeout=60)
    assert_still_serving(server)


def _request(model="half_plus_two", **tensor):
    request = service_pb2.ModelInferRequest(model_name=model)
    item = request.inputs.add(name=tensor.pop("name", "x"), datatype=tensor.pop("datatype", "FP32"),
                              shape=tensor.pop("shape", [3]))
    for field, values in tensor.items():
        if field == "raw":
            request.raw_input_contents.append(values)
        else:
            getattr(item.contents, field).extend(values)
    return request


HOSTILE_GRPC = [
    ("wrong datatype", _request(datatype="INT32", int_contents=[1, 2, 5]), grpc.StatusCode.INVALID_ARGUMENT,
     "expects float32 but int32"),
    ("contents shorter than the shape", _request(shape=[1000], fp32_contents=[1.0]),
     grpc.StatusCode.INVALID_ARGUMENT, "needs 1000 elements, fp32_contents has 1"),
    ("raw bytes shorter than the shape", _request(shape=[1 << 20], raw=X.tobytes()), grpc.StatusCode.INVALID_ARGUMENT,
     "12 were sent"),
    ("huge declared shape", _request(shape=[1 << 40, 1 << 40], raw=b""), grpc.StatusCode.INVALID_ARGUMENT,
     "more than the limit"),
    ("value in the wrong contents field", _request(int64_contents=[1, 2, 5]), grpc.StatusCode.INVALID_ARGUMENT,
     "fp32_contents has 0"),
    ("FP16 in typed contents", _request(datatype="FP16", fp32_contents=[1.0, 2.0, 5.0]),
     grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents"),
    ("integer out of range", _request(datatype="INT8", int_contents=[1, 2, 500]), grpc.StatusCode.INVALID_ARGUMENT,
     "out of range"),
    ("unknown datatype", _request(datatype="FP8", raw=b"abc"), grpc.StatusCode.INVALID_ARGUMENT,
     "unsupported datatype"),
    ("unknown model", _request(model="nope", fp32_contents=[1, 2, 5]), grpc.StatusCode.NOT_FOUND, "nope"),
    ("version not a number", service_pb2.ModelInferRequest(model_name="half_plus_two", model_version="x"),
     grpc.StatusCode.INVALID_ARGUMENT, "non-negative integer"),
    ("no inputs", service_pb2.ModelInferRequest(model_name="half_plus_two"), grpc.StatusCode.INVALID_ARGUMENT,
     "no inputs"),
]


@pytest.mark.parametrize("case", HOSTILE_GRPC, ids=[c[0] for c in HOSTILE_GRPC])
def test_hostile_grpc_input_gets_the_protocols_status(server, stub, case):
    _, request, code, words = case
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request, timeout=30)
    assert error.value.code() == code
    assert words in error.value.details()
    assert_still_serving(server)


def test_grpc_readiness_of_unknown_models_is_false_and_bad_versions_are_errors(stub):
    assert not stub.ModelReady(service_pb2.ModelReadyRequest(name="nope")).ready
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelReady(service_pb2.ModelReadyRequest(name="half_plus_two", version="-1"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="nope"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_tritonclient_raises_the_servers_message(rest, rpc):
    with pytest.raises(InferenceServerException, match="expects float32 but int32"):
        rest.infer("half_plus_two", [http_input("x", np.array([1], dtype=np.int32), "INT32")])
    with pytest.raises(InferenceServerException, match="expects float32 but int32"):
        rpc.infer("half_plus_two", [grpc_input("x", np.array([1], dtype=np.int32), "INT32")])


# --- the project's .proto is the protocol's ----------------------------------------------


def _our_descriptor() -> descriptor_pb2.FileDescriptorProto:
    # In a subprocess: its messages share their full names with tritonclient's, loaded here.
    code = ("import sys; from agent.serving.protos import grpc_service_pb2 as g; "
            "sys.stdout.buffer.write(g.DESCRIPTOR.serialized_pb)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=60).stdout
    return descriptor_pb2.FileDescriptorProto.FromString(out)


def _fields(message: descriptor_pb2.DescriptorProto, prefix: str) -> dict:
    out = {f"{prefix}.{f.name}": (f.number, f.type, f.label, f.type_name.rsplit(".", 1)[-1]) for f in message.field}
    for nested in message.nested_type:
        if not nested.options.map_entry:
            out.update(_fields(nested, f"{prefix}.{nested.name}"))
    return out


def test_our_proto_has_the_protocols_names_and_field_numbers():
    ours = _our_descriptor()
    theirs = descriptor_pb2.FileDescriptorProto()
    service_pb2.DESCRIPTOR.CopyToProto(theirs)
    assert ours.package == theirs.package == "inference"
    their_messages = {m.name: m for m in theirs.message_type}
    our_fields, their_fields = {}, {}
    for message in ours.message_type:
        our_fields.update(_fields(message, message.name))
        their_fields.update(_fields(their_messages[message.name], message.name))
    assert our_fields == {k: their_fields[k] for k in our_fields}
    their_methods = {m.name: (m.input_type, m.output_type) for m in theirs.service[0].method}
    our_methods = {m.name: (m.input_type, m.output_type) for m in ours.service[0].method}
    assert ours.service[0].name == theirs.service[0].name == "GRPCInferenceService"
    assert set(our_methods) >= {"ServerLive", "ServerReady", "ModelReady", "ModelMetadata", "ModelInfer"}
    assert our_methods == {k: their_methods[k] for k in our_methods}


# --- model switches ---------------------------------------------------------------------


def test_a_new_version_replaces_the_old_one_with_no_failed_v2_request(tmp_path):
    import shutil
    import time

    models = tmp_path / "models"
    hpt = copy_builtin(models, "half_plus_two")
    config = tmp_path / "models.config"
    write_config(config, [{"name": "half_plus_two", "base_path": hpt}])
    server = Server(config).start()
    try:
        server.wait_available("half_plus_two", 1)
        rest = thttp.InferenceServerClient(f"{server.ip}:8501", network_timeout=60)
        rpc = tgrpc.InferenceServerClient(f"{server.ip}:8500")
        shutil.copytree(hpt / "1", models / "staging")
        (models / "staging").rename(hpt / "2")  # atomic, as the model sync does
        deadline = time.monotonic() + 30
        while server.states("half_plus_two") != {2: "AVAILABLE", 1: "END"}:
            # Any failure raises; each answer must be right whichever version served it.
            for result in (rest.infer("half_plus_two", [http_input("x", X, "FP32")]),
                           rpc.infer("half_plus_two", [grpc_input("x", X, "FP32")])):
                np.testing.assert_array_equal(result.as_numpy("y"), EXPECTED)
            assert time.monotonic() < deadline, server.states("half_plus_two")
        assert rest.get_model_metadata("half_plus_two")["versions"] == ["2"]
        assert rpc.is_model_ready("half_plus_two", "2") and not rpc.is_model_ready("half_plus_two", "1")
        assert rest.infer("half_plus_two", [http_input("x", X, "FP32")]).get_response()["model_version"] == "2"
        rest.close()
        rpc.close()
    finally:
        assert server.stop() == 0
