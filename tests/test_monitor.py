"""The monitor's figures: the request rate from Envoy's counter readings, and the
items of a node without a model server."""

from __future__ import annotations

import json

import pytest

from agent.commands.hook import ExitCode
from agent.nodeops.monitor import ITEMS, RATE_WINDOW, Sampler
from tests.harness.node import Node, wait_for
from tests.harness.platform_hooks import MONITOR_LIMIT, repo_node_tree, run_hook


def test_request_rate_covers_the_window_and_restarts_with_envoy():
    sampler = Sampler(view=None)
    assert sampler.requests_per_second() == 0.0
    sampler.record(100.0, 1000)
    assert sampler.requests_per_second() == 0.0  # one reading is no rate
    sampler.record(102.0, 1300)
    sampler.record(104.0, 1400)
    assert sampler.requests_per_second() == pytest.approx(100.0)
    sampler.record(104.0 + RATE_WINDOW, 1400)  # old readings leave the window
    assert sampler.requests_per_second() == pytest.approx(0.0)
    sampler.record(200.0, 10)  # Envoy restarted: counters start again
    sampler.record(202.0, 30)
    assert sampler.requests_per_second() == pytest.approx(10.0)


def test_monitor_of_a_node_without_model_server(node_ip, data_dir):
    node = Node(data_dir, repo_node_tree(node_ip)).start()
    try:
        wait_for(lambda: run_hook(data_dir, "health_check.check_cmd", role="model_repo").code == ExitCode.OK,
                 20, 0.2, "repo node healthy")
        run = run_hook(data_dir, "monitor", role="model_repo")
        assert run.code == ExitCode.OK and run.seconds < MONITOR_LIMIT
        values = json.loads(run.stdout)
        assert set(values) == {item.name for item in ITEMS}
        assert values["agent_up"] == 1 and values["healthy"] == 1
        assert values["loaded_models"] == 0 and values["model_available"] == 0
        assert values["model_server_memory"] == 0 and values["envoy_memory"] > 0
    finally:
        node.stop()
