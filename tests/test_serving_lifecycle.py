"""The built-in model server follows models.config and the version directories live:
a model switch loads the new model before unloading the old one, new versions replace
old ones without a gap, removed versions unload, and a version that cannot load is
reported (END with the error) while everything else keeps serving."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from agent.serving import versions
from tests.harness.serving_support import (
    Server,
    copy_builtin,
    predict_half_plus_two,
    wait_for,
    write_config,
)


@pytest.fixture
def models(tmp_path):
    return tmp_path / "models"


@pytest.fixture
def config(tmp_path):
    return tmp_path / "models.config"


@pytest.fixture
def server_factory(config, node_ip):
    started = []

    def start(models_list):
        write_config(config, models_list)
        server = Server(config, ip=node_ip).start()
        started.append(server)
        return server

    yield start
    for server in started:
        assert server.stop() == 0


def test_model_switch_loads_the_new_model_before_unloading_the_old(models, config, server_factory):
    old = copy_builtin(models, "half_plus_two")
    new = copy_builtin(models, "resnet")  # the slower of the two to load
    server = server_factory([{"name": "half_plus_two", "base_path": old}])
    server.wait_available("half_plus_two")

    samples = []  # (when, old model answered, new model AVAILABLE), in order
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            old_ok = predict_half_plus_two(server)[0] == 200
            samples.append((time.monotonic(), old_ok, "AVAILABLE" in server.states("resnet").values()))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        wait_for(lambda: len(samples) >= 3, 10, 0.01, "samples before the switch")
        # As the agent does: both models listed, then only the new one.
        write_config(config, [{"name": "half_plus_two", "base_path": old}, {"name": "resnet", "base_path": new}])
        server.wait_available("resnet")
        dropped_at = time.monotonic()
        write_config(config, [{"name": "resnet", "base_path": new}])
        wait_for(lambda: server.states("half_plus_two") == {}, timeout=30, what="old model unloaded")
        unloaded = len(samples)
        wait_for(lambda: len(samples) >= unloaded + 3, 10, 0.01, "samples after the unload")
    finally:
        stop.set()
        watcher.join()
    assert samples[0][1:] == (True, False)
    first_failure = next(i for i, (_, old_ok, _) in enumerate(samples) if not old_ok)
    assert all(old_ok for _, old_ok, _ in samples[:first_failure])  # no gap before the unload
    # The old model served while both were listed: it went only once the config dropped it.
    assert samples[first_failure][0] > dropped_at, "old model gone while still listed"
    assert not any(old_ok for _, old_ok, _ in samples[first_failure:])  # and stayed gone
    assert server.post("/v1/models/half_plus_two:predict", {"instances": [1.0]})[0] == 404


def test_direct_switch_keeps_the_old_model_until_the_new_one_is_available(models, config, server_factory):
    old = copy_builtin(models, "half_plus_two")
    new = copy_builtin(models, "resnet")
    server = server_factory([{"name": "half_plus_two", "base_path": old}])
    server.wait_available("half_plus_two")
    write_config(config, [{"name": "resnet", "base_path": new}])
    seen = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        old_ok = predict_half_plus_two(server)[0] == 200
        new_up = "AVAILABLE" in server.states("resnet").values()
        seen.append((old_ok, new_up))
        if not old_ok:
            break
    assert seen[-1] == (False, True), "old model gone before the new one was AVAILABLE"


def test_new_version_replaces_the_old_one_without_a_gap(models, server_factory):
    hpt = copy_builtin(models, "half_plus_two")
    server = server_factory([{"name": "half_plus_two", "base_path": hpt}])
    server.wait_available("half_plus_two", 1)
    shutil.copytree(hpt / "1", models / "staging")
    (models / "staging").rename(hpt / "2")  # atomic, as the model sync does
    failures = []
    deadline = time.monotonic() + 20
    while server.states("half_plus_two") != {2: "AVAILABLE", 1: "END"}:
        if predict_half_plus_two(server)[0] != 200:
            failures.append(time.monotonic())
        assert time.monotonic() < deadline, server.states("half_plus_two")
    assert failures == []
    assert server.post("/v1/models/half_plus_two/versions/2:predict", {"instances": [2.0]}) == (
        200, {"predictions": [3.0]})
    assert server.post("/v1/models/half_plus_two/versions/1:predict", {"instances": [2.0]})[0] == 404


def test_version_policies_and_removed_versions(models, server_factory):
    hpt = copy_builtin(models, "half_plus_two")
    for version in (2, 3):
        shutil.copytree(hpt / "1", hpt / str(version))
    other = copy_builtin(models, "half_plus_two", as_name="pinned")
    shutil.copytree(other / "1", other / "2")
    server = server_factory([
        {"name": "half_plus_two", "base_path": hpt, "extra": ["model_version_policy { all {} }"]},
        {"name": "pinned", "base_path": other, "extra": ["model_version_policy { specific { versions: 1 } }"]},
    ])
    wait_for(lambda: server.states("half_plus_two") == {1: "AVAILABLE", 2: "AVAILABLE", 3: "AVAILABLE"},
             timeout=30, what="all versions")
    server.wait_available("pinned", 1)
    assert server.states("pinned") == {1: "AVAILABLE"}
    shutil.rmtree(hpt / "2")
    wait_for(lambda: server.states("half_plus_two").get(2) == "END", timeout=30, what="version 2 unloaded")
    assert server.post("/v1/models/half_plus_two/versions/2:predict", {"instances": [1.0]})[0] == 404
    assert server.post("/v1/models/half_plus_two/versions/3:predict", {"instances": [1.0]})[0] == 200


def test_broken_versions_are_reported_and_do_not_disturb_the_others(models, server_factory):
    good = copy_builtin(models, "half_plus_two")
    corrupt = models / "corrupt"
    (corrupt / "1").mkdir(parents=True)
    (corrupt / "1" / "model.onnx").write_bytes(b"\x08\x07garbage, not a model")
    empty = models / "empty"
    (empty / "1").mkdir(parents=True)
    saved = models / "saved"
    (saved / "1").mkdir(parents=True)
    (saved / "1" / "saved_model.pb").write_bytes(b"")
    server = server_factory([{"name": n, "base_path": models / n} for n in ("half_plus_two", "corrupt", "empty", "saved")])
    server.wait_available("half_plus_two")
    for name, text in (("corrupt", "not a valid ONNX model"), ("empty", "empty"), ("saved", "no MetaGraphDef tagged 'serve'")):
        wait_for(lambda: server.states(name) == {1: "END"}, timeout=30, what=f"{name} reported")
        (entry,) = server.get(f"/v1/models/{name}")[1]["model_version_status"]
        assert entry["status"]["error_code"] != "OK" and text in entry["status"]["error_message"], entry
        status, doc = server.post(f"/v1/models/{name}:predict", {"instances": [1.0]})
        assert status == 404 and "Servable not found" in doc["error"]
    assert predict_half_plus_two(server) == (200, [2.5, 3.0, 4.5])
    # Fixing the files retries the load.
    shutil.copy(good / "1" / "model.onnx", empty / "1" / "model.onnx")
    server.wait_available("empty", 1)
    assert predict_half_plus_two(server, "empty") == (200, [2.5, 3.0, 4.5])


def test_a_bad_config_file_keeps_the_models_in_force(config, models, server_factory):
    hpt = copy_builtin(models, "half_plus_two")
    server = server_factory([{"name": "half_plus_two", "base_path": hpt}])
    server.wait_available("half_plus_two")
    log_before = len(server.log.read_text())
    config.write_text("model_config_list { config { name: 'x' ")
    # The poll has read the bad file once the server says it rejected it.
    wait_for(lambda: "models config rejected" in server.log.read_text()[log_before:], 30, 0.05,
             "the bad config to be read and rejected")
    assert predict_half_plus_two(server) == (200, [2.5, 3.0, 4.5])
    assert server.states("half_plus_two") == {1: "AVAILABLE"}
    write_config(config, [{"name": "again", "base_path": hpt}])
    server.wait_available("again")
    wait_for(lambda: server.states("half_plus_two") == {}, timeout=30, what="old model unloaded")


def test_openvino_ir_is_served(models, server_factory, tmp_path):
    ir = models / "ir" / "1"
    ir.mkdir(parents=True)
    import onnx
    import openvino
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "half"], ["t"]), helper.make_node("Add", ["t", "two"], ["y"])], "hpt",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
        initializer=[helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
                     helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "hpt.onnx"))
    openvino.save_model(openvino.convert_model(str(tmp_path / "hpt.onnx")), str(ir / "model.xml"))
    server = server_factory([{"name": "ir", "base_path": models / "ir"}])
    server.wait_available("ir")
    assert server.post("/v1/models/ir:predict", {"instances": [[1.0], [5.0]]}) == (200, {"predictions": [[2.5], [4.5]]})
    status, doc = server.post("/v1/models/ir:predict", {"instances": [[1.0, 2.0]]})
    assert status == 400 and "expects shape" in doc["error"]


def test_sigterm_stops_promptly_with_exit_0(models, server_factory):
    hpt = copy_builtin(models, "half_plus_two")
    server = server_factory([{"name": "half_plus_two", "base_path": hpt}])
    server.wait_available("half_plus_two")
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 10


def test_version_replaced_in_place_is_reloaded_without_a_gap(models, server_factory):
    """The model store swaps a changed version's directory in atomically, same number:
    the server loads the new files while it keeps serving the old ones."""
    import onnx
    from onnx import numpy_helper

    from agent.modelstore.layout import publish
    from agent.serving.builtin_models import half_plus_two_model

    hpt = copy_builtin(models, "half_plus_two")
    server = server_factory([{"name": "half_plus_two", "base_path": hpt}])
    server.wait_available("half_plus_two", 1)
    changed = half_plus_two_model()
    for init in changed.graph.initializer:
        if init.name == "two":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 1, "two"))  # half_plus_three
    (models / "staging").mkdir()
    onnx.save(changed, str(models / "staging" / "model.onnx"))
    publish(models / "staging", hpt / "1", models / "old")  # atomic swap, as the model store does
    deadline = time.monotonic() + 20
    while True:
        status, body = server.post("/v1/models/half_plus_two:predict", {"instances": [2.0]})
        assert status == 200, body  # never a gap
        if body == {"predictions": [4.0]}:
            break
        assert body == {"predictions": [3.0]} and time.monotonic() < deadline
    assert server.states("half_plus_two") == {1: "AVAILABLE"}


def test_sigterm_during_a_hung_initial_load_stops_the_server(models, config, node_ip):
    """A load stuck inside a runtime (here: a model file that is a FIFO nobody writes)
    must not make the server deaf to its supervisor's SIGTERM."""
    fifo = models / "stuck" / "1" / "model.onnx"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    write_config(config, [{"name": "stuck", "base_path": fifo.parent.parent}])
    # Old enough to count as a finished copy, so the initial load (not a later scan) takes it.
    wait_for(lambda: versions.complete(fifo.parent, time.time()), 30, 0.1, "the version to be complete")
    server = Server(config, ip=node_ip)
    log = server.log
    proc = subprocess.Popen([sys.executable, "-m", "agent", "serve", f"--host={node_ip}",
                             f"--model_config_file={config}"], stdout=subprocess.DEVNULL, stderr=open(log, "ab"))
    try:
        wait_for(lambda: "loading model version" in log.read_text() or proc.poll() is not None, 30, 0.05,
                 "the initial load to begin")
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()  # the bound only catches a hang
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "stop requested during the initial load" in log.read_text()


def test_sigusr1_writes_every_threads_stack_to_the_log_and_serving_goes_on(models, server_factory):
    """The operator's view into a stuck server: `kill -USR1` dumps the stacks, changing nothing."""
    server = server_factory([{"name": "half_plus_two", "base_path": copy_builtin(models, "half_plus_two")}])
    server.wait_available("half_plus_two")
    server.dump_stacks()  # sends SIGUSR1 and waits for the dump in the log
    log = server.log.read_text()
    assert "most recent call first" in log and "agent/commands/serve.py" in log, log[-2000:]
    assert predict_half_plus_two(server)[0] == 200
