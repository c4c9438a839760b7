"""One real node for the security replays (agent, Envoy, built-in model server, console
on their real ports on a loopback address), and the check run after every attack: the
seed's prediction still answers, no process restarted, the model server's memory stayed
bounded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.harness.addresses import allocate_loopback_ip
from tests.harness.foundation_trees import single_node_tree
from tests.harness.node import Node, http, predict

# The model server's resident memory after any single attack. Its baseline (Python,
# ONNX Runtime, the seed models) is ~150-250 MiB; every request limit keeps one hostile
# request's peak far below this.
RSS_BOUND = 1024 * 1024 * 1024
EXPECTED = [2.5, 3.0, 4.5]


@dataclass
class Processes:
    agent: int
    envoy: int
    model_server: int


def _pids(node: Node) -> Processes:
    run = node.data_dir / "run"
    pids = {p.stem: json.loads(p.read_text())["pid"] for p in run.glob("*.json")}
    server = next(pid for name, pid in pids.items() if name != "envoy" and "minio" not in name)
    return Processes(node.proc.pid, pids["envoy"], server)


class Target:
    """The node under attack and its health check."""

    def __init__(self, node: Node):
        self.node = node
        self.ip = node.ip
        self.start = _pids(node)

    def model_server(self) -> psutil.Process:
        return psutil.Process(self.start.model_server)

    def assert_healthy(self) -> None:
        """The seed's predict through Envoy and directly; same processes; RSS bounded."""
        assert predict(self.ip) == (200, {"predictions": EXPECTED})
        status, body = http("POST", f"http://{self.ip}:8501/v1/models/half_plus_two:predict",
                            b'{"instances": [1.0, 2.0, 5.0]}', timeout=30)
        assert (status, json.loads(body)) == (200, {"predictions": EXPECTED})
        assert self.node.proc.poll() is None, self.node.stderr()[-3000:]
        assert _pids(self.node) == self.start, "a process restarted"
        for pid in (self.start.agent, self.start.envoy, self.start.model_server):
            assert psutil.pid_exists(pid)
        rss = self.model_server().memory_info().rss
        assert rss < RSS_BOUND, f"model server RSS {rss >> 20} MiB over the bound {RSS_BOUND >> 20} MiB"


@pytest.fixture(scope="package")
def target(tmp_path_factory):
    data_dir: Path = tmp_path_factory.mktemp("security") / "data"
    data_dir.mkdir()
    ip = allocate_loopback_ip()
    node = Node(data_dir, single_node_tree(ip, **{"enable.access.log": "true", "web.password": "s3cret-pass"}))
    node.install_models()
    node.start().wait_serving()
    t = Target(node)
    t.assert_healthy()
    yield t
    node.stop()
