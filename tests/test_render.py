"""Rendering: confd lookups, Envoy's files, models.config, and Envoy accepting them."""

from __future__ import annotations

import asyncio

import pytest
import yaml

from agent.pipeline.envoy import check_staged
from agent.files import CheckFailed, stage
from agent.paths import Paths
from agent.pipeline.render import TreeLookup, render_envoy, render_models_config, render_template
from agent.state import normalize_tree, parse_cluster_state
from tests.foundation_trees import add_serving_node, single_node_tree


def test_confd_lookups_follow_confd_semantics():
    t = TreeLookup(normalize_tree({
        "env": {"model.name": "resnet", "http.port": 8080},
        "hosts": {"model_serving": {"i-b": {"ip": "10.0.0.2"}, "i-a": {"ip": "10.0.0.1"}}},
    }))
    assert t.getv("/env/model.name") == "resnet"  # a dot is not a separator
    assert t.getv("/env/missing", "dflt") == "dflt"
    with pytest.raises(KeyError):
        t.getv("/env/missing")
    assert t.exists("/hosts/model_serving") and not t.exists("/nope")
    assert t.ls("/hosts/model_serving") == ["i-a", "i-b"]
    assert t.lsdir("/hosts") == ["model_serving"] and t.lsdir("/env") == []
    assert t.getvs("/hosts/model_serving/*/ip") == ["10.0.0.1", "10.0.0.2"]
    assert t.gets("/env/*") == [{"key": "/env/http.port", "value": "8080"}, {"key": "/env/model.name", "value": "resnet"}]


def test_templates_can_use_confd_lookups_on_the_raw_tree(tmp_path, monkeypatch):
    (tmp_path / "t.j2").write_text('{{ getv("/env/model.name") }} {{ ls("/hosts/model_serving") | join(",") }}')
    import agent.pipeline.render as render

    monkeypatch.setattr(render._ENV, "loader", __import__("jinja2").FileSystemLoader(tmp_path))
    assert render_template("t.j2", normalize_tree(single_node_tree())) == "half_plus_two i-local01"


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
