"""Server-side batching: concurrent requests (REST and gRPC) are merged, run once and split
back without ever mixing answers; a bad request fails alone; a full queue answers
UNAVAILABLE."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from agent.serving import tensors
from agent.serving.batching import BatchingOptions, BatchingServable
from agent.serving.errors import ServingError
from agent.serving.loader import load_servable
from agent.serving.protos import error_codes_pb2 as codes
from agent.serving.protos import predict_pb2, prediction_service_pb2_grpc
from agent.serving.runtime import RuntimeOptions
from tests.harness.node import wait_for
from tests.harness.serving_support import Server, pair_model, write_config

K = 3


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    pair_model(root / "models" / "pair" / "1")
    return root


@pytest.fixture(scope="module")
def server(pair_dir):
    config = pair_dir / "models.config"
    write_config(config, [{"name": "pair", "base_path": pair_dir / "models" / "pair"}])
    # fp32 so batched and unbatched answers are comparable to 1e-6; a long batch timeout
    # so concurrent requests surely meet in a batch.
    s = Server(config, threads=2, extra_args=("--precision=fp32", "--batch_timeout_micros=50000",
                                              "--max_batch_size=16")).start()
    s.wait_available("pair")
    yield s
    assert s.stop() == 0


def _unbatched(model_file, a, b):
    """The answer of one request alone, computed by ONNX Runtime directly on the model file."""
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    mix, dot = session.run(["mix", "dot"], {"a": a, "b": b})
    return mix, dot


def _rest(server, a, b):
    status, doc = server.post("/v1/models/pair:predict", {"inputs": {"a": a.tolist(), "b": b.tolist()}})
    if status != 200:
        return status, doc["error"]
    return status, (np.array(doc["outputs"]["mix"], np.float32), np.array(doc["outputs"]["dot"], np.float32))


def _grpc(server, a, b):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "pair"
    request.inputs["a"].CopyFrom(tensors.from_ndarray(a))
    request.inputs["b"].CopyFrom(tensors.from_ndarray(b))
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            reply = stub.Predict(request, timeout=60)
        except grpc.RpcError as e:
            return e.code(), e.details()
    return 200, (tensors.to_ndarray(reply.outputs["mix"], "mix"), tensors.to_ndarray(reply.outputs["dot"], "dot"))


def test_concurrent_requests_get_their_own_answers_and_bad_ones_fail_alone(server, pair_dir):
    rng = np.random.default_rng(15)
    model_file = pair_dir / "models" / "pair" / "1" / "model.onnx"
    cases = []
    for i in range(64):
        rows = 1 + i % 3
        a = rng.standard_normal((rows, K)).astype(np.float32)
        b = rng.standard_normal((rows, K)).astype(np.float32)
        kind = "good"
        if i % 8 == 3:
            b = rng.standard_normal((rows, K + 1)).astype(np.float32)  # passes the checks, fails in the runtime
            kind = "runtime-bad"
        elif i % 8 == 6:
            a = a.astype(np.float64)  # wrong dtype: refused before any batch
            kind = "dtype-bad"
        cases.append((i, kind, a, b))
    before = json.loads(json.dumps(server.get("/v1/models/pair/runtime")[1]))["versions"][0]["batching"]

    def call(case):
        i, kind, a, b = case
        return (_rest if i % 2 else _grpc)(server, a, b)

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(call, cases))

    for (i, kind, a, b), (status, result) in zip(cases, answers):
        if kind == "good":
            assert status == 200, (i, result)
            mix, dot = _unbatched(model_file, a, b)
            assert result[0].shape == mix.shape and result[1].shape == dot.shape, i
            np.testing.assert_allclose(result[0], mix, rtol=1e-6, atol=1e-6, err_msg=f"request {i}")
            np.testing.assert_allclose(result[1], dot, rtol=1e-6, atol=1e-6, err_msg=f"request {i}")
        else:
            assert status in (400, grpc.StatusCode.INVALID_ARGUMENT), (i, kind, status, result)
    after = server.get("/v1/models/pair/runtime")[1]["versions"][0]
    assert after["runtime"] == "openvino" and after["precision"] == "fp32"
    merged = after["batching"]["merged_batches"] - before["merged_batches"]
    assert merged > 0, "no two concurrent requests were ever merged: batching did not happen"
    assert after["batching"]["largest_batch"] <= 16


def test_runtime_details_of_an_unknown_model_are_not_found(server):
    status, doc = server.get("/v1/models/nope/runtime")
    assert status == 404 and "nope" in doc["error"]


class GatedServableDouble:
    """Test double around a real servable: runs block until the test opens the gate, so the
    batch thread is provably busy while the queue fills."""

    def __init__(self, inner):
        self.inner = inner
        self.gate = threading.Event()
        self.entered = threading.Event()
        for attr in ("name", "version", "path", "signatures", "runtime", "precision", "signature_defs", "refused"):
            setattr(self, attr, getattr(inner, attr))

    def run(self, feeds, output_names, graph=""):
        self.entered.set()
        self.gate.wait(timeout=60)
        return self.inner.run(feeds, output_names, graph)

    def details(self):
        return self.inner.details()

    def close(self):
        self.inner.close()


def test_a_full_batch_queue_answers_unavailable(pair_dir):
    real = load_servable("pair", 1, pair_dir / "models" / "pair" / "1", RuntimeOptions(precision="fp32"))
    gated = GatedServableDouble(real)
    batched = BatchingServable(gated, BatchingOptions(max_batch_size=2, max_enqueued_batches=2, batch_timeout_micros=0))
    feeds = {"a": np.ones((1, K), np.float32), "b": np.ones((1, K), np.float32)}
    pool = ThreadPoolExecutor(max_workers=8)
    try:
        running = pool.submit(batched.run, feeds, ["mix"])
        assert gated.entered.wait(30), "the batch thread never ran"
        queued = [pool.submit(batched.run, feeds, ["mix"]) for _ in range(4)]  # 2 batches x 2 rows
        wait_for(lambda: batched.details()["batching"]["queued"] == 4, timeout=30, what="4 queued")
        with pytest.raises(ServingError) as refused:
            batched.run(feeds, ["mix"])
        assert refused.value.code == codes.UNAVAILABLE and "queue" in refused.value.message
        gated.gate.set()
        for future in [running, *queued]:
            np.testing.assert_allclose(future.result(timeout=30)["mix"], [[3.0, 3.0, 3.0]])
    finally:
        gated.gate.set()
        batched.close()
        pool.shutdown()


def test_padding_to_allowed_sizes_and_variable_lengths(pair_dir):
    """allowed_batch_sizes pads a batch up to the next allowed size; pad_variable_length_inputs
    lets inputs of different lengths share a batch, zero-padded, as in TF Serving."""
    real = load_servable("pair", 1, pair_dir / "models" / "pair" / "1", RuntimeOptions(precision="fp32"))
    gated = GatedServableDouble(real)
    seen: list[tuple] = []
    inner_run = gated.run

    def recording_run(feeds, output_names, graph=""):
        seen.append(feeds["a"].shape)
        return inner_run(feeds, output_names, graph)

    gated.run = recording_run
    options = BatchingOptions(max_batch_size=8, allowed_batch_sizes=(4, 8), batch_timeout_micros=0,
                              pad_variable_length_inputs=True)
    batched = BatchingServable(gated, options)
    short = {"a": np.array([[1.0, 2.0]], np.float32), "b": np.array([[1.0, 1.0]], np.float32)}
    long = {"a": np.array([[1.0, 2.0, 3.0]], np.float32), "b": np.array([[1.0, 1.0, 1.0]], np.float32)}
    pool = ThreadPoolExecutor(max_workers=4)
    try:
        first = pool.submit(batched.run, long, ["mix", "dot"])
        assert gated.entered.wait(30)
        queued = [pool.submit(batched.run, short, ["mix", "dot"]), pool.submit(batched.run, long, ["mix", "dot"])]
        wait_for(lambda: batched.details()["batching"]["queued"] == 2, timeout=30, what="2 queued")
        gated.gate.set()
        np.testing.assert_allclose(first.result(timeout=30)["mix"], [[3.0, 5.0, 7.0]])
        got_short, got_long = (f.result(timeout=30) for f in queued)
    finally:
        gated.gate.set()
        batched.close()
        pool.shutdown()
    # The short request came back zero-padded to the batch's length, the long one intact.
    np.testing.assert_allclose(got_short["mix"], [[3.0, 5.0, 0.0]])
    np.testing.assert_allclose(got_short["dot"], [3.0])
    np.testing.assert_allclose(got_long["mix"], [[3.0, 5.0, 7.0]])
    np.testing.assert_allclose(got_long["dot"], [6.0])
    assert seen == [(1, 3), (4, 3)], seen  # 1 alone; then 2 rows padded to the allowed size 4
    assert batched.details()["batching"]["merged_batches"] == 1


FIXTURES = Path(__file__).parent / "fixtures"


def test_stopping_with_batching_on_multi_graph_savedmodels_exits_0(tmp_path):
    """SIGTERM with batching on exits 0 every time: the batch threads end and the compiled
    models are released before the interpreter exits (a batch thread dropping the last
    reference to them during exit aborted the process: 8 stops in 12 on the TF1 fixture)."""
    config = tmp_path / "models.config"
    write_config(config, [  # SavedModels of one graph per signature
        {"name": "tf1", "base_path": FIXTURES / "tf1" / "half_plus_two"},
        {"name": "multi", "base_path": FIXTURES / "savedmodels" / "multi"},
    ])
    exit_codes = []
    for _ in range(10):
        server = Server(config, extra_args=("--enable_batching=true",)).start()
        try:
            for model in ("tf1", "multi"):
                server.wait_available(model, timeout=90)
                (version,) = server.get(f"/v1/models/{model}/runtime")[1]["versions"]
                assert version["batching"] is not None, version  # the stop below is with batching on
        finally:
            exit_codes.append(server.stop())
        assert exit_codes[-1] == 0, server.log.read_text()[-3000:]
    assert exit_codes == [0] * 10
