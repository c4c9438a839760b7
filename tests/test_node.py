"""One node end to end: metadata in, live Envoy and model-server config out (real Envoy,
real built-in model server). Every change applies live; bad metadata changes nothing."""

from __future__ import annotations

import copy
from http.client import HTTPConnection
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from agent.serving.config import parse_models_config
from tests.harness.foundation_trees import add_serving_node, single_node_tree
from tests.harness.node import Node, http, predict, rendered, wait_for


@pytest.fixture
def node(node_ip, data_dir):
    n = Node(data_dir, single_node_tree(node_ip, **{"enable.access.log": "false"}))
    n.install_models()
    n.start().wait_serving()
    yield n
    n.stop()


def test_rest_and_grpc_reach_the_model_server_through_envoy(node):
    status, body = predict(node.ip)
    assert status == 200 and body == {"predictions": [2.5, 3.0, 4.5]}

    import grpc
    import numpy as np

    from agent.serving.protos import predict_pb2, prediction_service_pb2_grpc
    from agent.serving.tensors import from_ndarray

    with grpc.insecure_channel(f"{node.ip}:8081") as channel:  # HTTP/2 through Envoy to 8500
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        request.inputs["x"].CopyFrom(from_ndarray(np.array([1.0, 2.0, 5.0], dtype=np.float32)))
        reply = stub.Predict(request, timeout=10)
    assert list(reply.outputs["y"].float_val) == [2.5, 3.0, 4.5]


def test_serving_nodes_follow_metadata_live_without_restarting_envoy(node, ip_factory):
    pid = node.envoy_pid()
    conn = HTTPConnection(node.ip, 8080, timeout=5)
    body = json.dumps({"instances": [1.0]})
    conn.request("POST", "/v1/models/half_plus_two:predict", body)
    assert json.loads(conn.getresponse().read()) == {"predictions": [2.5]}

    other = ip_factory()
    # How fast a change reaches Envoy is bench/propagation.py's; the bound here only catches a hang.
    node.update(add_serving_node(node.tree, "i-other", other, 2))
    wait_for(lambda: node.upstream_hosts() == {node.ip, other}, 30, what="new node in /clusters")
    assert node.upstream_hosts("serving_grpc") == {node.ip, other}

    # The same client connection keeps working; the new node, having no model server,
    # fails its health check and gets no traffic.
    for _ in range(5):
        conn.request("POST", "/v1/models/half_plus_two:predict", body)
        response = conn.getresponse()
        assert response.status == 200, response.read()
        response.read()
    assert node.envoy_pid() == pid

    node.update(single_node_tree(node.ip, **{"enable.access.log": "false"}))
    wait_for(lambda: node.upstream_hosts() == {node.ip}, 30, what="node removed from /clusters")
    conn.request("POST", "/v1/models/half_plus_two:predict", body)
    assert conn.getresponse().status == 200
    assert node.envoy_pid() == pid


def test_http_port_change_moves_the_listener_live(node):
    pid = node.envoy_pid()
    tree = copy.deepcopy(node.tree)
    tree["env"]["http.port"] = "8082"
    node.update(tree)
    wait_for(lambda: predict(node.ip, 8082)[0] == 200, 5, what="listener on 8082")
    assert node.envoy_pid() == pid
    assert predict(node.ip, 8082)[1] == {"predictions": [2.5, 3.0, 4.5]}
    wait_for(lambda: predict(node.ip, 8080)[0] == 0, 15, what="old listener to close")


# Envoy writes its access log every second (--file-flush-interval-msec 1000): a wait of
# three intervals is long enough to see every line of requests already answered.
FLUSH_WAIT = 3.0


def predict_marked(node, marker: str) -> int:
    """The seed's predict with `marker` as User-Agent (the access log shows it)."""
    import urllib.request

    req = urllib.request.Request(f"http://{node.ip}:8080/v1/models/half_plus_two:predict",
                                 data=json.dumps({"instances": [1.0]}).encode(), headers={"User-Agent": marker})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


def test_access_log_toggle_names_the_upstream(node):
    access_log = node.data_dir / "logs" / "envoy.log"

    def lines(marker: str) -> list[str]:
        text = access_log.read_text() if access_log.exists() else ""
        return [line for line in text.splitlines() if f'"{marker}"' in line]

    def toggle(on: bool) -> None:
        tree = copy.deepcopy(node.tree)
        tree["env"]["enable.access.log"] = "true" if on else "false"
        node.update(tree)
        wait_for(lambda: node.status()["params"]["enable.access.log"] is on and node.status()["up_to_date"], 10,
                 0.1, f"access log {'on' if on else 'off'} applied")

    toggle(True)
    # On: lines appear, naming the upstream (waited for until there).
    wait_for(lambda: predict_marked(node, "first-on") == 200 and lines("first-on"), 10, 0.2, "access-log lines")
    assert f"upstream={node.ip}:8501" in lines("first-on")[0]
    # The positive control of the check below: the same requests and the same wait,
    # with the log on, do show their lines.
    for _ in range(5):
        assert predict_marked(node, "control-on") == 200
    time.sleep(FLUSH_WAIT)
    assert len(lines("control-on")) == 5
    toggle(False)
    for _ in range(5):
        assert predict_marked(node, "while-off") == 200
    time.sleep(FLUSH_WAIT)  # "no line" can only be seen by waiting past the flush interval
    assert lines("while-off") == []


INVALID = [
    ("env/http.port: port 8500 is reserved", lambda t: t["env"].update({"http.port": "8500"})),
    ("env/grpc.port: must differ from http.port", lambda t: t["env"].update({"grpc.port": "8080"})),
    ("env/s3.type: must be one of none, minio, ois", lambda t: t["env"].update({"s3.type": "nfs"})),
    ("env/s3.type: minio needs a model_repo node", lambda t: t["env"].update(
        {"s3.type": "minio", "s3.access.key": "k", "s3.secret.key": "s"})),
    ("/host: is required", lambda t: t.pop("host")),
    ("/host/ip: must be an IP address", lambda t: t["host"].update({"ip": "not-an-ip"})),
    ("/hosts/gpu/i-x/role: unknown role 'gpu'", lambda t: t["hosts"].update({"gpu": {"i-x": {"ip": "127.0.0.9"}}})),
]


def test_invalid_metadata_is_rejected_whole_and_traffic_keeps_flowing(node):
    before = rendered(node.data_dir)
    good_tree = copy.deepcopy(node.tree)
    for expected, breaker in INVALID:
        tree = copy.deepcopy(good_tree)
        breaker(tree)
        node.update(tree)
        wait_for(lambda: any(expected in r for r in ((node.status().get("last_rejection") or {}).get("reasons") or [])),
                 5, 0.1, f"rejection {expected!r}")
        assert rendered(node.data_dir) == before
        assert predict(node.ip)[0] == 200
        out = subprocess.run([sys.executable, "-m", "agent", "validate", "--metadata", str(node.metadata)],
                             capture_output=True, text=True)
        assert out.returncode == 1 and expected in out.stderr
        assert expected in node.stderr()  # logged with the same words

    node.metadata.write_text("host: [unclosed\n  env: {")  # garbage YAML
    wait_for(lambda: "not valid YAML" in str(node.status().get("last_rejection")), 20, 0.1, "garbage rejected")
    assert rendered(node.data_dir) == before and predict(node.ip)[0] == 200

    node.update(good_tree)
    wait_for(lambda: node.status()["up_to_date"], 20, 0.1, "good metadata applied again")


def test_same_snapshot_twice_writes_nothing(node):
    conf = node.data_dir / "conf"
    stamps = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in conf.rglob("*") if p.is_file()}
    applied = node.status()["applied_at"]
    # Same tree, different bytes (reordered keys, numbers unquoted): a new snapshot, same state.
    node.metadata.write_text(json.dumps(node.tree, indent=1))
    wait_for(lambda: node.status()["applied_at"] != applied, 20, 0.1, "snapshot applied")
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in stamps} == stamps


def test_agent_killed_during_apply_leaves_no_partial_file_and_traffic_flows(node, ip_factory):
    tree = node.tree
    for i in range(3):
        tree = add_serving_node(tree, f"i-x{i}", ip_factory(), 10 + i)
        node.update(tree)
        time.sleep(0.05 * i)  # staggered writes, so the kill below lands mid-apply (not a wait)
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait()
    for name, content in rendered(node.data_dir).items():
        if ".staged-" in name:  # a staged file is not live; the next start removes it
            continue
        if name.endswith(".yaml"):
            assert yaml.safe_load(content), name
        elif name.endswith(".json"):
            assert json.loads(content), name
        else:
            assert parse_models_config(content.decode()), name
    # Envoy and the model server outlive the agent, so traffic keeps flowing ...
    assert predict(node.ip)[0] == 200
    # ... and a new agent adopts them instead of restarting them.
    pid = node.envoy_pid()
    node.start().wait_serving()
    wait_for(lambda: node.status()["up_to_date"], 10, 0.1, "restarted agent applied the metadata")
    assert node.envoy_pid() == pid and node.status()["processes"]["envoy"]["adopted"] is True
    assert not [n for n in rendered(node.data_dir) if ".staged-" in n]
    assert node.upstream_hosts() == {node.ip} | {n["ip"] for n in tree["hosts"]["model_serving"].values()}


def test_crashed_envoy_is_restarted_and_serves_again(node):
    pid = node.envoy_pid()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: node.envoy_pid() != pid, 10, 0.1, "envoy restarted")
    node.wait_serving(timeout=20)
    assert node.status()["processes"]["envoy"]["restarts"] == 1
