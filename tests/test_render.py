"""Rendering: Envoy's files, models.config, and Envoy accepting them."""

from __future__ import annotations

import asyncio

import pytest
import yaml

from agent.files import CheckFailed, stage
from agent.paths import Paths
from agent.pipeline.envoy import check_staged
from agent.pipeline.render import render_envoy, render_models_config
from agent.state import normalize_tree, parse_cluster_state
from tests.harness.foundation_trees import add_serving_node, single_node_tree


def test_envoy_files_route_to_every_active_serving_node(tmp_path):
    tree = normalize_tree(add_serving_node(single_node_tree(), "i-two", "127.0.0.2", 2))
    tree["deleting-hosts"] = {"model_serving": {"i-two": {"ip": "127.0.0.2"}}}
    files = {f.path.name: f for f in render_envoy(parse_cluster_state(tree), Paths(tmp_path))}
    eds = yaml.safe_load(files["eds_serving_rest.yaml"].content)["resources"][0]
    hosts = [e["endpoint"]["address"]["socket_address"] for e in eds["endpoints"][0]["lb_endpoints"]]
    assert hosts == [{"address": "127.0.0.1", "port_value": 8501}]  # the leaving node is drained
    grpc = yaml.safe_load(files["eds_serving_grpc.yaml"].content)["resources"][0]
    assert grpc["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] == 8500
    lds = yaml.safe_load(files["lds.yaml"].content)["resources"]
    assert [lst["name"] for lst in lds] == ["rest_8080", "grpc_8081", "health"]
    cds = yaml.safe_load(files["cds.yaml"].content)["resources"]
    assert cds[0]["health_checks"][0]["http_health_check"]["path"] == "/v1/models/half_plus_two"
    boot = yaml.safe_load(files["bootstrap.yaml"].content)
    assert boot["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 8001}


def test_models_config_is_tf_serving_text_format(tmp_path):
    text = render_models_config(["resnet", "half_plus_two"], Paths(tmp_path)).content.decode()
    assert text.count("config {") == 2
    assert f'base_path: "{tmp_path}/models/resnet"' in text


async def test_envoy_accepts_the_rendered_files(tmp_path):
    paths = Paths(tmp_path)
    paths.ensure()
    files = render_envoy(parse_cluster_state(normalize_tree(single_node_tree())), paths)
    await check_staged([stage(f) for f in files], paths.envoy_dynamic)


async def test_envoy_rejection_is_a_check_failure(tmp_path):
    paths = Paths(tmp_path)
    paths.ensure()
    files = render_envoy(parse_cluster_state(normalize_tree(single_node_tree())), paths)
    lds = next(f for f in files if f.path.name == "lds.yaml")
    broken = type(lds)(lds.path, lds.content.replace(b"ROUND_ROBIN", b"X").replace(b"codec_type: AUTO", b"codec_type: NOPE"), check=lds.check)
    with pytest.raises(CheckFailed, match="envoy rejected"):
        await check_staged([stage(broken)], paths.envoy_dynamic)
