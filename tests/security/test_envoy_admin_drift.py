"""Envoy's admin port is reachable by any local user: a health-check failure or a
listener drain done behind the agent's back shows in status and health, and the agent
restores what the metadata says. Its own node (not the shared one: Envoy restarts)."""

from __future__ import annotations

import json

import pytest

from agent.nodeops.drift import DRIFT_HEALTHCHECK_FAILED, DRIFT_LISTENERS_DRAINED
from tests.harness.foundation_trees import single_node_tree
from tests.harness.node import Node, http, predict, wait_for


@pytest.fixture
def node(node_ip, data_dir):
    n = Node(data_dir, single_node_tree(node_ip))
    n.install_models()
    n.start().wait_serving()
    yield n
    n.stop()


def test_healthcheck_fail_behind_the_agents_back_is_seen_and_undone(node):
    assert http("POST", f"{node.admin}/healthcheck/fail")[0] == 200
    wait_for(lambda: http("GET", f"{node.admin}/ready")[1].strip() == b"LIVE"
             and json.loads(http("GET", f"{node.admin}/server_info")[1])["state"] == "LIVE", 15, 0.1, "health restored")
    wait_for(lambda: "envoy_drift" not in node.status()["lifecycle"], 15, 0.1, "drift cleared in status")
    assert DRIFT_HEALTHCHECK_FAILED in (node.data_dir / "logs" / "agent.log").read_text()
    assert predict(node.ip)[0] == 200


def test_listener_drain_behind_the_agents_back_is_undone(node):
    envoy_before = node.envoy_pid()
    assert http("POST", f"{node.admin}/drain_listeners")[0] == 200
    wait_for(lambda: node.envoy_pid() != envoy_before, 30, 0.2, "Envoy restarted by the agent")
    node.wait_serving(timeout=60)
    assert DRIFT_LISTENERS_DRAINED in (node.data_dir / "logs" / "agent.log").read_text()
