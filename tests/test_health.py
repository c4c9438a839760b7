"""The node's health check as the platform runs it: on a node without a model server,
and while the node drains."""

from __future__ import annotations

import asyncio

from agent.clients.control import request
from agent.commands.hook import ExitCode
from tests.harness.foundation_trees import single_node_tree
from tests.harness.node import Node, wait_for
from tests.harness.platform_hooks import repo_node_tree, run_hook


def test_a_node_without_model_server_is_healthy_when_envoy_is_ready(node_ip, data_dir):
    node = Node(data_dir, repo_node_tree(node_ip)).start()
    try:
        wait_for(lambda: run_hook(data_dir, "health_check.check_cmd", role="model_repo").code == ExitCode.OK,
                 20, 0.2, "repo node healthy")
        _, report = asyncio.run(request(data_dir / "run" / "agent.sock", "GET", "/health"))
        assert report["healthy"] and report["envoy_ready"] and report["metadata_applied"]
        assert report["model_available"] is None and report["model_server_answering"] is None
    finally:
        node.stop()


def test_a_draining_node_is_unhealthy_until_undrained(node_ip, data_dir):
    node = Node(data_dir, single_node_tree(node_ip))
    node.install_models()
    node.start().wait_serving()
    socket = data_dir / "run" / "agent.sock"
    try:
        status, drained = asyncio.run(request(socket, "POST", "/drain", json={"timeout": 2}))
        assert status == 200 and drained["in_flight"] == 0
        check = run_hook(data_dir, "health_check.check_cmd")
        assert check.code == ExitCode.FAILED and "the node is draining" in check.stdout
        status, _ = asyncio.run(request(socket, "POST", "/drain", json={"timeout": -1}))
        assert status == 400
        asyncio.run(request(socket, "POST", "/undrain"))
        assert run_hook(data_dir, "health_check.check_cmd").code == ExitCode.OK
    finally:
        node.stop()
