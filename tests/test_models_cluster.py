"""Several models per cluster: three models served at once by a three-node cluster (real
Envoy and built-in server on each node); under REST and gRPC load on two of them, the
third is removed (the model Envoy health-checks, the hardest case) and a fourth added:
not one request for the others fails, every node serves the new model, and status,
health and the console's model list say so per model."""

from __future__ import annotations

import asyncio
import copy
import json

import pytest

from agent.commands.up import cluster_trees
from agent.clients.control import request
from tests.harness.load import GrpcLoad, Load
from tests.harness.node import Node, http, predict, until, wait_for
from tests.harness.serving_support import copy_builtin

pytestmark = pytest.mark.slow

FIRST = "half_plus_two"
OTHERS = ("beta", "gamma")
ADDED = "delta"


def _states(ip: str, model: str, port: int = 8501) -> dict[str, str]:
    status, body = http("GET", f"http://{ip}:{port}/v1/models/{model}", timeout=2)
    return {v["version"]: v["state"] for v in json.loads(body)["model_version_status"]} if status == 200 else {}


@pytest.fixture
def nodes(ip_factory, tmp_path):
    ips = [ip_factory() for _ in range(3)]
    out = []
    for k, tree in enumerate(cluster_trees(ips, **{"model.name": f"{FIRST}, {', '.join(OTHERS)}"}), start=1):
        data_dir = tmp_path / f"node{k}"
        data_dir.mkdir()
        # Every model on local disk (s3.type none); delta is there before model.name lists it.
        for name in (FIRST, *OTHERS, ADDED):
            copy_builtin(data_dir / "models", "half_plus_two", as_name=name)
        out.append(Node(data_dir, tree).start())
    try:
        for n in out:
            n.wait_serving()
        for n in out:
            for model in (FIRST, *OTHERS):
                wait_for(lambda: _states(n.ip, model) == {"1": "AVAILABLE"}, 60, 0.2, f"{model} on {n.ip}")
        # Every Envoy sends to every node before the load starts.
        wait_for(lambda: all(n.upstream_hosts() == set(ips) for n in out), 30, 0.2, "every node routed")
    except BaseException:
        for n in out:
            n.stop()
        raise
    yield out
    for n in out:
        n.stop()


def _set_models(nodes: list[Node], names: str) -> None:
    for n in nodes:
        tree = copy.deepcopy(n.tree)
        tree["env"]["model.name"] = names
        n.update(tree)


async def test_three_models_one_removed_one_added_under_load_fails_no_request_for_the_others(nodes):
    entry = nodes[0]
    loads = [Load(entry.ip, model=OTHERS[0], concurrency=3), GrpcLoad(entry.ip, model=OTHERS[1], concurrency=2),
             Load(nodes[1].ip, model=OTHERS[1], concurrency=2), GrpcLoad(nodes[2].ip, model=OTHERS[0], concurrency=2)]
    for load in loads:
        await load.__aenter__()
    try:
        await asyncio.gather(*(load.wait_requests(50) for load in loads))

        # Removed: the first model, the one every Envoy health-checks on.
        _set_models(nodes, ", ".join(OTHERS))
        await until(lambda: all(_states(n.ip, FIRST) == {} for n in nodes), 60, f"{FIRST} unloaded everywhere")
        await asyncio.gather(*(load.wait_requests(50) for load in loads))

        # Added.
        _set_models(nodes, ", ".join((*OTHERS, ADDED)))
        await until(lambda: all(_states(n.ip, ADDED) == {"1": "AVAILABLE"} for n in nodes), 60,
                    f"{ADDED} AVAILABLE on every node")
        await asyncio.gather(*(load.wait_requests(50) for load in loads))
    finally:
        for load in loads:
            await load.__aexit__(None, None, None)
    for load in loads:
        assert load.result.failed == 0, f"{load.model} through {load.ip}:{load.port}: {load.result}"
        assert load.result.ok >= 150

    # The added model answers through every node's Envoy, from every node; the removed one is gone.
    for n in nodes:
        assert predict(n.ip, model=ADDED)[1] == {"predictions": [2.5, 3.0, 4.5]}
        assert predict(n.ip, model=FIRST)[0] == 404
    assert entry.upstream_hosts() == {n.ip for n in nodes}

    # Status, health and the console speak per model.
    status = entry.status()
    assert [m["name"] for m in status["models"]] == [*OTHERS, ADDED]
    _, report = await request(entry.data_dir / "run" / "agent.sock", "GET", "/health")
    assert report["healthy"] and report["models"] == {m: True for m in (*OTHERS, ADDED)}, report
    _, body = http("GET", f"http://{entry.ip}:8090/api/models")
    rows = {m["name"]: m for m in json.loads(body)["models"]}
    assert all(rows[m]["configured"] and rows[m]["server"]["loaded"] for m in (*OTHERS, ADDED))
    assert not rows[FIRST]["configured"] and not rows[FIRST]["server"]["loaded"]  # on disk only
