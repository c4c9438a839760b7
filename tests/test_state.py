"""Metadata validation: every rule names the parameter or path and the rule broken."""

from __future__ import annotations

import pytest

from agent.errors import InvalidMetadata
from agent.state import Role, normalize_tree, parse_cluster_state
from tests.harness.foundation_trees import add_serving_node, single_node_tree


def problems(tree: dict) -> list[str]:
    with pytest.raises(InvalidMetadata) as e:
        parse_cluster_state(normalize_tree(tree))
    return [str(p) for p in e.value.problems]


def test_single_node_example_parses_to_typed_state():
    state = parse_cluster_state(normalize_tree(single_node_tree()))
    assert state.me.ip == "127.0.0.1" and state.me.role is Role.MODEL_SERVING and state.me.cpu == 2
    assert state.params.model_name == "half_plus_two"
    assert state.params.http_port == 8080 and state.params.grpc_port == 8081
    assert state.params.enable_access_log is True
    assert [n.instance_id for n in state.serving_nodes] == ["i-local01"]
    assert state.repo_node is None


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"http.port": "abc"}, "env/http.port: must be an integer, got 'abc'"),
        ({"http.port": "70000"}, "env/http.port: must be at most 65535, got 70000"),
        ({"grpc.port": "0"}, "env/grpc.port: must be at least 1, got 0"),
        ({"http.port": "8500"}, "env/http.port: port 8500 is reserved for the model server's gRPC port"),
        ({"grpc.port": "8501"}, "env/grpc.port: port 8501 is reserved for the model server's REST port"),
        ({"http.port": "8001"}, "env/http.port: port 8001 is reserved for Envoy's admin port"),
        ({"grpc.port": "8090"}, "env/grpc.port: port 8090 is reserved for the web console"),
        ({"grpc.port": "8080"}, "env/grpc.port: must differ from http.port (both are 8080)"),
        ({"s3.type": "gcs"}, "env/s3.type: must be one of none, minio, ois, got 'gcs'"),
        ({"serving.backend": "torch"}, "env/serving.backend: must be one of auto, tfserving, builtin, got 'torch'"),
        ({"enable.access.log": "maybe"}, "env/enable.access.log: must be true or false, got 'maybe'"),
        ({"model.name": "../etc"}, "env/model.name: must match"),
        ({"model.base.path": "http://x/models"}, "env/model.base.path: must match"),
        ({"model.sync.interval": "1"}, "env/model.sync.interval: must be at least 5, got 1"),
        ({"s3.type": "ois"}, "env/s3.endpoint: is required when s3.type is ois"),
        ({"s3.type": "ois", "s3.endpoint": "https://s3.example.com"}, "env/s3.access.key: is required when s3.type is ois"),
        ({"s3.type": "minio", "s3.access.key": "k", "s3.secret.key": "s"}, "env/s3.type: minio needs a model_repo node"),
    ],
)
def test_each_parameter_rule_is_reported_by_name(env, expected):
    found = problems(single_node_tree(**env))
    assert any(p.startswith(expected) for p in found), found


def test_tree_rules_name_the_path():
    tree = single_node_tree()
    del tree["host"]
    assert problems(tree) == ["/host: is required (this node's ip, role, instance_id)"]

    tree = single_node_tree()
    tree["host"]["ip"] = "10.0.0.300"
    assert "/host/ip: must be an IP address, got '10.0.0.300'" in problems(tree)

    tree = single_node_tree()
    tree["hosts"]["gpu_worker"] = {"i-x": {"ip": "127.0.0.9"}}
    assert "/hosts/gpu_worker/i-x/role: unknown role 'gpu_worker' (model_serving, model_repo or tfserving)" in problems(tree)

    tree = add_serving_node(single_node_tree(), "i-dup", "127.0.0.1", 2)
    assert any("127.0.0.1 is also the ip of" in p for p in problems(tree))


def test_all_problems_are_reported_at_once():
    found = problems(single_node_tree(**{"http.port": "x", "s3.type": "y"}))
    assert len(found) == 2


def test_platform_tree_forms_are_understood():
    tree = single_node_tree(**{"s3.type": "minio"})
    tree["hosts"]["tfserving-replica"] = tree["hosts"].pop("model_serving")
    tree["hosts"]["model_repo"] = {"i-repo": {"ip": "127.0.0.5", "sid": "9"}}
    tree["env"]["access_key"] = {"access_key_id": "AKID", "secret_access_key": "SECRET"}
    tree["deleting-hosts"] = {"tfserving": {"i-local01": {"ip": "127.0.0.1"}}}
    tree["cmd"] = {"id": "j-1", "cmd": "echo hi", "timeout": "30"}
    state = parse_cluster_state(normalize_tree(tree))
    assert state.repo_node.ip == "127.0.0.5"
    assert state.params.s3_access_key == "AKID" and state.params.s3_secret_key == "SECRET"
    assert state.leaving and state.active_serving_nodes == ()
    assert state.cmd.id == "j-1" and state.cmd.timeout == 30
    assert "SECRET" not in repr(state) and state.params.public()["s3.secret.key"] == "***"


def test_normalize_tree_makes_every_leaf_a_string():
    assert normalize_tree({"a": 1, "b": True, "c": [1, "x"], "d": {}, "e": None}) == {
        "a": "1", "b": "true", "c": {"0": "1", "1": "x"}, "e": "",
    }
