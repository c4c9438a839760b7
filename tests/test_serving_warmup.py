"""Warmup before AVAILABLE (TF Serving's assets.extra/tf_serving_warmup_requests, else a
synthetic request) and the compiled-model cache that makes a restart fast."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from agent.serving import tensors
from agent.serving.protos import prediction_log_pb2
from tests.harness.node import wait_for
from tests.harness.serving_support import Server, write_config

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "savedmodels"


def tfrecord(records: list[bytes]) -> bytes:
    """TFRecord framing: length, its CRC, data, its CRC. The server does not check CRCs
    (a corrupt record fails to parse instead), so they are left zero here."""
    out = b""
    for data in records:
        out += struct.pack("<Q", len(data)) + b"\0" * 4 + data + b"\0" * 4
    return out


def predict_log(alias: str, values) -> bytes:
    entry = prediction_log_pb2.PredictionLog()
    request = entry.predict_log.request
    request.model_spec.name = "warm"
    request.inputs[alias].CopyFrom(tensors.from_ndarray(np.array(values, np.float32)))
    return entry.SerializeToString()


def regress_log(x: float) -> bytes:
    entry = prediction_log_pb2.PredictionLog()
    request = entry.regress_log.request
    request.model_spec.name = "warm"
    request.model_spec.signature_name = "regress_x_to_y"
    request.input.example_list.examples.add().features.feature["x"].float_list.value.append(x)
    return entry.SerializeToString()


@pytest.fixture
def server_factory(tmp_path):
    servers = []

    def start(models: dict[str, Path], *extra: str) -> Server:
        config = tmp_path / "models.config"
        write_config(config, [{"name": n, "base_path": p} for n, p in models.items()])
        s = Server(config, extra_args=extra).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def _model_with_warmup(root: Path, name: str, content: bytes) -> Path:
    base = root / name
    shutil.copytree(FIXTURES / "half_plus_two", base)
    (base / "1" / "assets.extra").mkdir()
    (base / "1" / "assets.extra" / "tf_serving_warmup_requests").write_bytes(content)
    return base


def test_warmup_requests_run_before_available_and_a_bad_one_fails_the_load(tmp_path, server_factory):
    good = _model_with_warmup(tmp_path / "models", "good", tfrecord([predict_log("x", [[1.0]]), regress_log(3.0)]))
    wrong_input = _model_with_warmup(tmp_path / "models", "wrong_input",
                                     tfrecord([predict_log("x", [[1.0]]), predict_log("nope", [[1.0]])]))
    truncated = _model_with_warmup(tmp_path / "models", "truncated", tfrecord([predict_log("x", [[1.0]])])[:-6])
    server = server_factory({"good": good, "wrong_input": wrong_input, "truncated": truncated})
    server.wait_available("good")
    assert "2 warmup requests" in server.log.read_text()
    for name, text in (("wrong_input", "warmup record 1 failed"), ("truncated", "record 0 is truncated")):
        wait_for(lambda: server.states(name) == {1: "END"}, timeout=30, what=f"{name} to fail")
        (entry,) = server.get(f"/v1/models/{name}")[1]["model_version_status"]
        assert text in entry["status"]["error_message"], entry
    status, doc = server.post("/v1/models/good:predict", {"instances": [[4.0]]})
    assert (status, doc) == (200, {"predictions": [[4.0]]})


def test_a_restart_uses_the_compiled_model_cache(tmp_path, server_factory):
    cache = tmp_path / "cache"
    models = {"cnn": FIXTURES / "cnn", "multi": FIXTURES / "multi"}
    server = server_factory(models, f"--compile_cache_dir={cache}")
    server.wait_available("cnn")
    server.wait_available("multi")
    first = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert len(first) >= 3  # one compiled blob per signature graph: cnn 1, multi 2
    assert server.stop() == 0
    again = server_factory(models, f"--compile_cache_dir={cache}")
    again.wait_available("cnn")
    again.wait_available("multi")
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == first, "the restart compiled again"
