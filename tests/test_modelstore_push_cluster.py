"""`models push` while a three-node cluster syncs and serves under load: the new version
is served by every node with no failed request, and a push killed half-way leaves
nothing any node loads. Once against a real S3 endpoint (moto), once into each node's
local models root (s3.type none)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_modelstore_support import (  # noqa: F401  (fixtures)
    ACCESS_KEY,
    MiB,
    SECRET_KEY,
    moto_server,
    new_bucket,
    operator_client,
    random_bytes,
    read_tree,
)

from agent.commands.up import cluster_trees
from agent.modelstore.listing import PUSH_MARKER
from tests.harness.load import Load
from tests.harness.node import Node, http, until

pytestmark = pytest.mark.slow

MODEL = "half_plus_two"


def _builtin(tmp_path: Path) -> Path:
    """The built-in half_plus_two's version directory, to push as new versions."""
    root = tmp_path / "builtin"
    subprocess.run([sys.executable, "-m", "agent", "models", "install-builtin", str(root), "--name", MODEL],
                   check=True, capture_output=True)
    return root / MODEL / "1"


def _version_dir(tmp_path: Path, name: str, extra: dict[str, bytes]) -> Path:
    """A copy of the built-in model with extra files (the loader ignores them)."""
    src = _builtin(tmp_path)
    out = tmp_path / name
    out.mkdir()
    (out / "model.onnx").write_bytes((src / "model.onnx").read_bytes())
    for rel, data in extra.items():
        (out / rel).write_bytes(data)
    return out


def _push(node: Node, src: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "models", "push", str(src), "--name", MODEL,
         "--metadata", str(node.metadata), "--data-dir", str(node.data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _pushed(proc: subprocess.Popen) -> int:
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)["version"]


def _kill_when(proc: subprocess.Popen, condition, what: str) -> None:
    """SIGKILL the push once `condition()` holds (it must still be running then)."""
    try:
        deadline = time.monotonic() + 60
        while not condition():
            assert proc.poll() is None, f"the push ended before {what}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()


def _served_versions(node: Node) -> set[int]:
    status, body = http("GET", f"http://{node.ip}:8501/v1/models/{MODEL}")
    if status != 200:
        return set()
    return {int(v["version"]) for v in json.loads(body)["model_version_status"] if v["state"] == "AVAILABLE"}


def _syncs(node: Node) -> int:
    return node.status()["model_sync"]["syncs"]


def _start(tmp_path: Path, ips: list[str], install: bool, **env: str) -> list[Node]:
    nodes = []
    for k, tree in enumerate(cluster_trees(ips, **env), start=1):
        d = tmp_path / f"node{k}"
        d.mkdir()
        node = Node(d, tree)
        if install:
            node.install_models()
        nodes.append(node.start())
    for node in nodes:
        node.wait_serving(timeout=90)
    return nodes


async def test_push_to_the_store_while_the_cluster_serves_under_load(moto_server, ip_factory, tmp_path):
    client = operator_client(moto_server.endpoint)
    bucket = new_bucket(client)
    env = {"s3.type": "ois", "s3.endpoint": moto_server.endpoint, "s3.access.key": ACCESS_KEY,
           "s3.secret.key": SECRET_KEY, "model.base.path": f"s3://{bucket}/repo", "model.sync.interval": "5"}
    first_tree = cluster_trees([ip_factory()], **env)[0]
    (tmp_path / "seeder").mkdir()
    seeder = Node(tmp_path / "seeder", first_tree)  # never started: its metadata names the store
    assert _pushed(_push(seeder, _builtin(tmp_path))) == 1
    nodes = _start(tmp_path, [ip_factory() for _ in range(3)], install=False, **env)
    try:
        async with Load(nodes[0].ip, concurrency=3) as load:
            await load.wait_requests(50)
            v2 = _version_dir(tmp_path, "v2", {"variables.bin": random_bytes(20 * MiB, 2)})  # multipart
            assert _pushed(_push(nodes[1], v2)) == 2
            await until(lambda: all(_served_versions(n) == {2} for n in nodes), 90, "version 2 served everywhere")
            await load.wait_requests(100)

            v3 = _version_dir(tmp_path, "v3", {f"shard-{i}.bin": random_bytes(24 * MiB, i) for i in range(6)})
            proc = _push(nodes[2], v3)
            objects = lambda: [o["Key"] for o in client.list_objects_v2(  # noqa: E731
                Bucket=bucket, Prefix="repo/half_plus_two/3/").get("Contents", ())]
            _kill_when(proc, lambda: any(k.endswith(".bin") for k in objects()), "a shard was in the store")
            assert f"repo/half_plus_two/3/{PUSH_MARKER}" in objects()
            # Two more syncs on every node, each seeing the half-pushed version.
            after = {n.ip: _syncs(n) for n in nodes}
            await until(lambda: all(_syncs(n) >= after[n.ip] + 2 for n in nodes), 60, "two more syncs")
            await load.wait_requests(50)
        assert load.result.failed == 0, load.result
        for n in nodes:
            assert not (n.data_dir / "models" / MODEL / "3").exists()
            assert _served_versions(n) == {2}
            assert n.status()["model_sync"]["last_result"]["versions_pending"] == [3]
    finally:
        for n in nodes:
            n.stop()


async def test_push_to_each_local_root_while_the_cluster_serves_under_load(ip_factory, tmp_path):
    nodes = _start(tmp_path, [ip_factory() for _ in range(3)], install=True)
    try:
        async with Load(nodes[0].ip, concurrency=3) as load:
            await load.wait_requests(50)
            v2 = _version_dir(tmp_path, "v2", {"variables.bin": random_bytes(20 * MiB, 2)})
            for n in nodes:
                assert _pushed(_push(n, v2)) == 2
            await until(lambda: all(_served_versions(n) == {2} for n in nodes), 60, "version 2 served everywhere")
            await load.wait_requests(100)

            v3 = _version_dir(tmp_path, "v3", {"big.bin": random_bytes(256 * MiB - 1, 3)})
            victim = nodes[1]
            model = victim.data_dir / "models" / MODEL
            proc = _push(victim, v3)
            _kill_when(proc, lambda: any(p.name.startswith(".push-") and (p / "big.bin").exists()
                                         for p in model.iterdir()), "the copy was under way")
            assert sorted(p.name for p in model.iterdir() if p.name.isdigit()) == ["1", "2"]
            # The next push takes version 3 (the dead one never became a version) and is
            # served: the server scanned past the leftovers and loaded only complete versions.
            assert _pushed(_push(victim, v2)) == 3
            await until(lambda: _served_versions(victim) == {3}, 60, "version 3 served")
            await load.wait_requests(100)
        assert load.result.failed == 0, load.result
        assert read_tree(model / "3") == read_tree(v2)
    finally:
        for n in nodes:
            n.stop()
