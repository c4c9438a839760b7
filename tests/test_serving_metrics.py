"""The built-in model server's Prometheus metrics at TF Serving's path: the requests a
test sends over TF Serving's REST and gRPC APIs and the Open Inference Protocol are
counted exactly, by model, version and status, under TF Serving's names; clients cannot
grow the number of series."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from agent.serving import tensors
from agent.serving.protos import predict_pb2, prediction_service_pb2_grpc
from tests.harness.node import http
from tests.harness.serving_support import Server, copy_builtin, write_config

PATH = "/monitoring/prometheus/metrics"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    models = root / "models"
    copy_builtin(models, "half_plus_two", version=1)
    copy_builtin(models, "half_plus_two", version=2)
    copy_builtin(models, "digits")
    config = root / "models.config"
    write_config(config, [
        {"name": "half_plus_two", "base_path": models / "half_plus_two", "extra": ["model_version_policy { all {} }"]},
        {"name": "digits", "base_path": models / "digits"},
    ])
    s = Server(config).start()
    s.models = models
    s.wait_available("half_plus_two", 1)
    s.wait_available("half_plus_two", 2)
    s.wait_available("digits")
    yield s
    assert s.stop() == 0


def scrape(server: Server) -> dict[str, list]:
    """Metric family name -> its samples, parsed with the Prometheus client's own parser."""
    status, body = http("GET", server.rest + PATH, timeout=30)
    assert status == 200
    return {f.name: f.samples for f in text_string_to_metric_families(body.decode())}


def counts(server: Server) -> dict[tuple[str, str, str], float]:
    """(model_name, version, status) -> request_count."""
    samples = scrape(server).get(":tensorflow:serving:request_count", [])
    return {(s.labels["model_name"], s.labels["version"], s.labels["status"]): s.value for s in samples}


def latency_counts(server: Server) -> dict[tuple[str, str, str, str], float]:
    """(model_name, version, API, entrypoint) -> number of latency observations."""
    samples = scrape(server).get(":tensorflow:serving:request_latency", [])
    return {(s.labels["model_name"], s.labels["version"], s.labels["API"], s.labels["entrypoint"]): s.value
            for s in samples if s.name.endswith("_count")}


def delta(before: dict, after: dict) -> dict:
    """What changed between two scrapes (keys with a non-zero difference)."""
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after) if after.get(k, 0) != before.get(k, 0)}


def grpc_predict(server: Server, model: str, values, version: int | None = None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    tensors.from_ndarray(np.asarray(values, dtype=np.float32), request.inputs["x"])
    with grpc.insecure_channel(server.grpc_target) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)


def test_every_api_counts_exactly_the_requests_sent(server):
    before_counts, before_latency = counts(server), latency_counts(server)
    for _ in range(3):  # REST predict, latest version (2)
        assert server.post("/v1/models/half_plus_two:predict", {"instances": [1.0, 2.0]})[0] == 200
    for _ in range(2):  # REST predict, version 1 by number
        assert server.post("/v1/models/half_plus_two/versions/1:predict", {"instances": [1.0]})[0] == 200
    assert server.post("/v1/models/half_plus_two:predict", {"instances": [[1.0, 2.0], [3.0]]})[0] == 400
    for _ in range(4):  # gRPC Predict
        assert list(grpc_predict(server, "half_plus_two", [1.0]).outputs["y"].float_val) == [2.5]
    assert list(grpc_predict(server, "half_plus_two", [1.0], version=1).outputs["y"].float_val) == [2.5]
    with pytest.raises(grpc.RpcError) as failed:
        grpc_predict(server, "half_plus_two", [1.0], version=99)
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    # The Open Inference Protocol, REST and gRPC, with Triton's own clients.
    x = np.array([[0.0] * 64], dtype=np.float32)
    rest = thttp.InferenceServerClient(f"{server.ip}:8501", network_timeout=60)
    try:
        for _ in range(2):
            item = thttp.InferInput("images", [1, 64], "FP32")
            item.set_data_from_numpy(x)
            assert rest.infer("digits", [item]).as_numpy("classes").shape == (1,)
    finally:
        rest.close()
    rpc = tgrpc.InferenceServerClient(f"{server.ip}:8500")
    try:
        item = tgrpc.InferInput("images", [1, 64], "FP32")
        item.set_data_from_numpy(x)
        assert rpc.infer("digits", [item], model_version="1").as_numpy("classes").shape == (1,)
        bad = tgrpc.InferInput("images", [1, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
        with pytest.raises(InferenceServerException):
            rpc.infer("digits", [bad])
    finally:
        rpc.close()

    assert delta(before_counts, counts(server)) == {
        ("half_plus_two", "2", "OK"): 3 + 4,
        ("half_plus_two", "1", "OK"): 2 + 1,
        ("half_plus_two", "2", "INVALID_ARGUMENT"): 1,
        # The client's version number is no label: a version that was never loaded is "".
        ("half_plus_two", "", "NOT_FOUND"): 1,
        ("digits", "1", "OK"): 3,
        ("digits", "1", "INVALID_ARGUMENT"): 1,
    }
    assert delta(before_latency, latency_counts(server)) == {
        ("half_plus_two", "2", "Predict", "REST"): 3 + 1,
        ("half_plus_two", "1", "Predict", "REST"): 2,
        ("half_plus_two", "2", "Predict", "GRPC"): 4,
        ("half_plus_two", "1", "Predict", "GRPC"): 1,
        ("half_plus_two", "", "Predict", "GRPC"): 1,
        ("digits", "1", "ModelInfer", "REST"): 2,
        ("digits", "1", "ModelInfer", "GRPC"): 2,
    }


def test_hostile_names_and_versions_do_not_grow_the_series(server):
    families = scrape(server)
    series_before = sum(len(samples) for samples in families.values())
    for i in range(50):
        server.post(f"/v1/models/attacker-{i}:predict", {"instances": [1.0]})
        server.post(f"/v1/models/half_plus_two/versions/{1000 + i}:predict", {"instances": [1.0]})
        server.post(f"/v1/models/attacker-{i}/labels/x{i}:predict", {"instances": [1.0]})
    after = scrape(server)
    unknown = {(s.labels["model_name"], s.labels["version"], s.labels["status"])
               for s in after[":tensorflow:serving:request_count"]}
    assert ("(unknown)", "", "NOT_FOUND") in unknown
    assert not any(name.startswith("attacker") for name, _, _ in unknown)
    assert not any(version.startswith("10") for _, version, _ in unknown)
    # At most the new (unknown) and ("", NOT_FOUND) series appeared, whatever was sent.
    series_after = sum(len(samples) for samples in after.values())
    assert series_after - series_before <= 2 * (1 + 1 + 33 + 1 + 2)


def test_loads_warmups_and_batches_are_measured(server):
    families = scrape(server)
    loads = {(s.labels["model_path"], s.labels["status"]): s.value
             for s in families[":tensorflow:cc:saved_model:load_attempt_count"]}
    for path in (server.models / "half_plus_two" / "1", server.models / "half_plus_two" / "2", server.models / "digits" / "1"):
        assert loads[(str(path), "success")] >= 1
        latency = [s.value for s in families[":tensorflow:cc:saved_model:load_latency"]
                   if s.labels["model_path"] == str(path)]
        assert latency and latency[0] > 0
    warmed = {s.labels["model_path"] for s in families[":tensorflow:serving:model_warmup_latency"]
              if s.name.endswith("_count") and s.value >= 1}
    assert str(server.models / "digits" / "1") in warmed
    # digits batches (its input has a free batch dimension): every row sent is counted once.
    def rows_batched():
        samples = scrape(server).get(":tensorflow:serving:batching_session:input_batch_size", [])
        return sum(s.value for s in samples if s.name.endswith("_sum") and s.labels["model_name"] == "digits")
    before = rows_batched()
    assert server.post("/v1/models/digits:predict", {"instances": [[0.0] * 64] * 5})[0] == 200
    assert rows_batched() - before == 5


def test_the_metrics_path_answers_get_only(server):
    status, body = http("GET", server.rest + PATH, timeout=30)
    assert status == 200 and b"# TYPE :tensorflow:serving:request_count counter" in body
    assert http("POST", server.rest + PATH, b"", timeout=30)[0] in (400, 405)
