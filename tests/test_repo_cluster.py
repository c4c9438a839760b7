"""End to end on real components: a model_repo node running MinIO (the agent's own
process management; the test double unless a real `minio` is on PATH) and two serving
nodes syncing from it. An operator pushes models with boto3 and sets model.name: every
serving node syncs, verifies and serves them through Envoy; while the repository is
down, serving goes on from the local copies without a failed request, and syncing
resumes when it is back."""

from __future__ import annotations

import asyncio
import copy
import json
import time

import pytest

from agent.commands.up import cluster_trees
from tests.harness.load import Load
from tests.harness.node import Node, http, predict, wait_for
from tests.harness.repo_support import REPO_ENV, half_plus, minio_on_path, push_version, repo_client  # noqa: F401

pytestmark = pytest.mark.slow

INSTANCES = [1.0, 2.0, 5.0]


def answers(offset: float) -> list[float]:
    return [0.5 * x + offset for x in INSTANCES]


def direct_predictions(ip: str, model: str) -> list[float] | None:
    """What the model server on `ip` itself answers (not balanced by Envoy)."""
    status, body = http("POST", f"http://{ip}:8501/v1/models/{model}:predict",
                        json.dumps({"instances": INSTANCES}).encode(), timeout=5)
    return json.loads(body)["predictions"] if status == 200 else None


def set_model(nodes: list[Node], name: str) -> None:
    for n in nodes:
        tree = copy.deepcopy(n.tree)
        tree["env"]["model.name"] = name
        n.update(tree)


def sync_status(node: Node) -> dict:
    return node.status()["model_sync"]


async def wait(condition, timeout: float, what: str):
    return await asyncio.to_thread(wait_for, condition, timeout, 0.2, what)


async def test_serving_nodes_sync_verify_and_serve_pushed_models_and_ride_out_a_repository_outage(
        ip_factory, tmp_path, minio_on_path):
    serving_ips, repo_ip = [ip_factory(), ip_factory()], ip_factory()
    trees = cluster_trees(serving_ips, repo_ip, **REPO_ENV, **{"model.sync.interval": "5"})
    (tmp_path / "repo").mkdir()
    repo = Node(tmp_path / "repo", trees[-1])
    repo.install_models()  # staged by init; the agent seeds the bucket with them
    serving = []
    for k, tree in enumerate(trees[:-1], start=1):
        (tmp_path / f"node{k}").mkdir()
        serving.append(Node(tmp_path / f"node{k}", tree))
    nodes = [repo, *serving]
    for n in nodes:
        n.start()
    try:
        # Serving nodes start with no model on disk: the seeded built-in one comes from the repository.
        for n in serving:
            await asyncio.to_thread(n.wait_serving, 8080, 120)
        assert not any((n.data_dir / "models" / "resnet").exists() for n in serving)  # only model.name is synced

        s3 = repo_client(repo_ip)
        pushed = {1: half_plus(2.0), 2: half_plus(3.0), 3: half_plus(4.0)}
        push_version(s3, "mymodel", 1, pushed[1])
        set_model(nodes, "mymodel")
        for n in serving:
            await wait(lambda: direct_predictions(n.ip, "mymodel") == answers(2.0), 60, f"{n.ip} serving mymodel 1")
        # Only once every node serves it: Envoy balances over all of them.
        for n in serving:
            assert predict(n.ip, model="mymodel", instances=INSTANCES) == (200, {"predictions": answers(2.0)})
            assert (n.data_dir / "models" / "mymodel" / "1" / "model.onnx").read_bytes() == pushed[1]
            status = sync_status(n)
            assert status["versions"] == [1] and status["last_error"] is None

        # A new version pushed later is served by every serving node.
        push_version(s3, "mymodel", 2, pushed[2])
        for n in serving:
            await wait(lambda: direct_predictions(n.ip, "mymodel") == answers(3.0), 60, f"{n.ip} serving mymodel 2")
            assert (n.data_dir / "models" / "mymodel" / "2" / "model.onnx").read_bytes() == pushed[2]

        # The repository node goes down: serving goes on from the local copies.
        expected = {"predictions": answers(3.0)}
        async with Load(serving_ips[0], model="mymodel", expected=expected) as load1, \
                Load(serving_ips[1], model="mymodel", expected=expected) as load2:
            await load1.wait_requests(50)
            await load2.wait_requests(50)
            down_at = time.time()
            await asyncio.to_thread(repo.stop)
            for n in serving:  # each serving node tried to sync during the outage, and failed
                await wait(lambda: (s := sync_status(n))["last_error"] and s["last_sync_at"] > down_at, 90,
                           f"{n.ip} to notice the outage")
            await load1.wait_requests(50)
            await load2.wait_requests(50)
            back_at = time.time()
            await asyncio.to_thread(repo.start)
            for n in serving:  # syncing resumes
                await wait(lambda: (s := sync_status(n))["last_success_at"] and s["last_success_at"] > back_at, 90,
                           f"{n.ip} to sync again")
            await load1.wait_requests(50)
        print(f"repository down {back_at - down_at:.1f} s, syncing again {time.time() - back_at:.1f} s after; "
              f"load: {load1.result} / {load2.result}")
        assert load1.result.failed == 0 and load2.result.failed == 0, (load1.result, load2.result)

        # The repository kept its data across the outage, and a version pushed now is served by all.
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="models", Prefix="mymodel/")["Contents"]}
        assert keys == {"mymodel/1/model.onnx", "mymodel/2/model.onnx"}
        push_version(s3, "mymodel", 3, pushed[3])
        for n in serving:
            await wait(lambda: direct_predictions(n.ip, "mymodel") == answers(4.0), 60, f"{n.ip} serving mymodel 3")
        for n in serving:
            assert predict(n.ip, model="mymodel", instances=INSTANCES) == (200, {"predictions": answers(4.0)})
    finally:
        for n in nodes:
            n.stop()
