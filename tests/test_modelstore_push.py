"""`inference-agent models push`: a model directory becomes a new version in a real S3
endpoint (moto) or in the local models root, and no sync or model server ever takes it
before it is complete. The cluster-level test is in test_modelstore_push_cluster.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_modelstore_support import (  # noqa: F401  (fixtures)
    ACCESS_KEY,
    MiB,
    SECRET_KEY,
    TEST_OPTIONS,
    moto_server,
    numeric_versions,
    random_bytes,
    read_tree,
    s3,
    savedmodel_files,
    upload_version,
)

from agent.modelstore import sync_model
from agent.modelstore.listing import PUSH_MARKER
from agent.modelstore.push import PART_SIZE, PushError, push_to_root, push_to_store
from agent.serving import versions as version_dirs

PREFIX = "repo/mnist/"


def _write(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _keys(client, bucket: str, prefix: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", ())]


async def test_push_to_store_takes_the_next_version_verified_and_the_sync_takes_it(s3, tmp_path):
    client, bucket, store = s3
    upload_version(client, bucket, PREFIX, 3, savedmodel_files(3))  # written by another tool
    files = dict(savedmodel_files(4), **{"variables/big.bin": random_bytes(PART_SIZE + 3 * MiB, 4)})
    seen = []
    result = await push_to_store(store, _write(tmp_path / "src", files), "mnist", progress=seen.append,
                                 options=TEST_OPTIONS)

    assert result.version == 4 and result.files == len(files)
    assert sorted(_keys(client, bucket, f"{PREFIX}4/")) == sorted(f"{PREFIX}4/{rel}" for rel in files)  # marker gone
    big = client.head_object(Bucket=bucket, Key=f"{PREFIX}4/variables/big.bin")
    assert big["ETag"].strip('"').endswith("-2")  # multipart: the sync fetches its parts in parallel
    assert seen and seen[-1].bytes_done == seen[-1].bytes_total == sum(map(len, files.values()))
    synced = await sync_model(store, "mnist", tmp_path / "models", options=TEST_OPTIONS)
    assert synced.error is None and synced.versions_added == [3, 4]
    assert read_tree(tmp_path / "models" / "mnist" / "4") == files


async def test_push_refuses_an_existing_version_and_bad_directories(s3, tmp_path):
    client, bucket, store = s3
    upload_version(client, bucket, PREFIX, 2, savedmodel_files(2))
    src = _write(tmp_path / "src", {"model.onnx": b"onnx"})
    with pytest.raises(PushError, match="version 2 of 'mnist' already exists"):
        await push_to_store(store, src, "mnist", 2, options=TEST_OPTIONS)
    root = _write(tmp_path / "model", {"1/model.onnx": b"a", "2/model.onnx": b"b"})
    with pytest.raises(PushError, match="holds version directories"):
        await push_to_store(store, root, "mnist", options=TEST_OPTIONS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PushError, match="no files"):
        await push_to_root(tmp_path / "models", tmp_path / "empty", "m")
    with pytest.raises(PushError, match="not a directory"):
        await push_to_root(tmp_path / "models", tmp_path / "absent", "m")
    assert _keys(client, bucket, f"{PREFIX}3/") == []


async def test_a_version_with_the_push_marker_is_never_synced_nor_retired(s3, tmp_path):
    client, bucket, store = s3
    upload_version(client, bucket, PREFIX, 1, savedmodel_files(1))
    first = await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)
    assert first.versions_added == [1]
    # A push killed half-way: the marker and some of the files.
    client.put_object(Bucket=bucket, Key=f"{PREFIX}2/{PUSH_MARKER}", Body=b"{}")
    upload_version(client, bucket, PREFIX, 2, {"saved_model.pb": b"half"})
    # Version 1 replaced the same way (deleted, then a push of it died).
    client.delete_object(Bucket=bucket, Key=f"{PREFIX}1/saved_model.pb")
    client.put_object(Bucket=bucket, Key=f"{PREFIX}1/{PUSH_MARKER}", Body=b"{}")

    result = await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)
    assert result.error is None
    assert result.versions_pending == [1, 2] and result.retry_after is not None
    assert result.versions_added == result.versions_removed == []
    assert numeric_versions(tmp_path / "mnist") == [1]
    assert read_tree(tmp_path / "mnist" / "1") == savedmodel_files(1)


def _metadata(path: Path, env: dict[str, str]) -> Path:
    tree = {"host": {"ip": "127.0.0.1", "instance_id": "i-push", "role": "model_serving", "sid": "1"},
            "env": {"model.name": "mnist", **env}}
    path.write_text(yaml.safe_dump(tree))
    os.chmod(path, 0o600)
    return path


def _store_env(store) -> dict[str, str]:
    return {"s3.type": "ois", "s3.endpoint": store.endpoint_url, "s3.access.key": ACCESS_KEY,
            "s3.secret.key": SECRET_KEY, "model.base.path": f"s3://{store.bucket}/repo"}


def _push_cmd(src: Path, metadata: Path, data_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "agent", "models", "push", str(src), "--name", "mnist",
            "--metadata", str(metadata), "--data-dir", str(data_dir), *extra]


def test_cli_push_to_store_prints_the_version(s3, tmp_path):
    client, bucket, store = s3
    src = _write(tmp_path / "src", {"model.onnx": random_bytes(4096, 1)})
    meta = _metadata(tmp_path / "self.yaml", _store_env(store))
    out = subprocess.run(_push_cmd(src, meta, tmp_path / "data", "--version", "7"), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["version"] == 7
    assert _keys(client, bucket, f"{PREFIX}7/") == [f"{PREFIX}7/model.onnx"]
    again = subprocess.run(_push_cmd(src, meta, tmp_path / "data", "--version", "7"), capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 1 and "version 7 of 'mnist' already exists" in again.stderr
    assert SECRET_KEY not in again.stderr


async def test_cli_push_killed_half_way_leaves_nothing_a_sync_takes(s3, tmp_path):
    client, bucket, store = s3
    upload_version(client, bucket, PREFIX, 1, savedmodel_files(1))
    src = _write(tmp_path / "src", {f"shard-{i}.bin": random_bytes(24 * MiB, i) for i in range(6)})
    meta = _metadata(tmp_path / "self.yaml", _store_env(store))
    proc = subprocess.Popen(_push_cmd(src, meta, tmp_path / "data"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        # Killed once the first file is in the store, with others still on their way.
        while not any(k.endswith(".bin") for k in _keys(client, bucket, f"{PREFIX}2/")):
            assert proc.poll() is None and time.monotonic() < deadline, "push ended before it was killed"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert f"{PREFIX}2/{PUSH_MARKER}" in _keys(client, bucket, f"{PREFIX}2/")
    result = await sync_model(store, "mnist", tmp_path / "node", options=TEST_OPTIONS)
    assert result.error is None and result.versions_added == [1] and result.versions_pending == [2]
    assert numeric_versions(tmp_path / "node" / "mnist") == [1]
    # The next push takes the next free version, not the abandoned one.
    small = _write(tmp_path / "small", {"model.onnx": b"onnx"})
    out = subprocess.run(_push_cmd(small, meta, tmp_path / "data"), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["version"] == 3


async def test_push_to_local_root_appears_in_one_rename(tmp_path):
    root = tmp_path / "models"
    files = savedmodel_files(8)
    seen = []
    first = await push_to_root(root, _write(tmp_path / "src", files), "mnist", progress=seen.append)
    second = await push_to_root(root, tmp_path / "src", "mnist")
    assert (first.version, second.version) == (1, 2)
    assert read_tree(root / "mnist" / "2") == files
    assert [p.name for p in (root / "mnist").iterdir() if p.name.startswith(".push-")] == []
    # Renamed into place complete: a model server takes it at once (or, when the copy and
    # the rename fell in one tick of the kernel's clock, once it has been quiet).
    deadline = time.monotonic() + version_dirs.QUIET_SECONDS + 5
    while set(version_dirs.discover(root / "mnist")) != {1, 2}:
        assert time.monotonic() < deadline, "pushed versions not taken by the model server"
        await asyncio.sleep(0.05)
    with pytest.raises(PushError, match="version 2 of 'mnist' already exists"):
        await push_to_root(root, tmp_path / "src", "mnist", 2)


def test_cli_push_to_local_root_killed_half_way_leaves_no_version(tmp_path):
    src = _write(tmp_path / "src", {"a.bin": b"a", "big.bin": random_bytes(256 * MiB - 1, 3)})
    meta = _metadata(tmp_path / "self.yaml", {"s3.type": "none"})
    data = tmp_path / "data"
    proc = subprocess.Popen(_push_cmd(src, meta, data), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    model = data / "models" / "mnist"
    try:
        deadline = time.monotonic() + 60
        while not any(p.name.startswith(".push-") and (p / "big.bin").exists() for p in _iterdir(model)):
            assert proc.poll() is None and time.monotonic() < deadline, "push ended before it was killed"
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert numeric_versions(model) == []
    assert version_dirs.discover(model) == {}


def _iterdir(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except FileNotFoundError:
        return []


def test_a_version_copied_in_by_hand_is_loaded_only_once_quiet(tmp_path):
    model = tmp_path / "mnist"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.onnx").write_bytes(b"partial")  # a copy in progress
    assert version_dirs.discover(model) == {}
    now = time.time()
    assert not version_dirs.complete(model / "1", now)
    assert version_dirs.complete(model / "1", now + version_dirs.QUIET_SECONDS + 0.1)
    # cp -a sets old mtimes while it writes; the ctime still shows the writing.
    os.utime(model / "1" / "model.onnx", (1, 1))
    assert not version_dirs.complete(model / "1", now)
    # Copied elsewhere, then moved in: complete at once.
    staged = tmp_path / "staged"
    shutil.copytree(model / "1", staged)
    time.sleep(0.05)  # ctimes tick with the kernel's coarse clock
    os.rename(staged, model / "2")
    assert set(version_dirs.discover(model)) == {2}


def test_a_complete_version_rewritten_in_place_keeps_its_last_complete_state(tmp_path):
    model = tmp_path / "mnist"
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "model.onnx").write_bytes(b"complete")
    time.sleep(0.05)
    model.mkdir()
    os.rename(staged, model / "1")
    before = version_dirs.discover(model)[1]
    (model / "1" / "model.onnx").write_bytes(b"being rewri")  # a hand edit of a served version
    assert version_dirs.discover(model)[1] == before  # not unloaded, not reloaded half-written
    # A directory deleted (a scan sees it gone) and copied in again is new: not served
    # until complete.
    shutil.rmtree(model / "1")
    assert version_dirs.discover(model) == {}
    (model / "1").mkdir()
    (model / "1" / "model.onnx").write_bytes(b"partial")
    assert version_dirs.discover(model) == {}


async def test_a_push_whose_upload_is_corrupted_fails_and_leaves_nothing(s3, tmp_path):
    from tests.harness.s3_fault_proxy_double import FaultProxyDouble

    client, bucket, store = s3
    src = _write(tmp_path / "src", savedmodel_files(9))
    async with FaultProxyDouble(store.endpoint_url) as proxy:
        via_proxy = dataclasses.replace(store, endpoint_url=proxy.endpoint)
        # The store answers every listing with one that says the upload holds other bytes.
        proxy.inject("replace", path_contains=f"/{bucket}", times=1000, body=(
            '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            '<IsTruncated>false</IsTruncated><Contents><Key>repo/mnist/1/saved_model.pb</Key><Size>3000</Size>'
            '<ETag>"00000000000000000000000000000000"</ETag></Contents></ListBucketResult>').encode())
        with pytest.raises(PushError, match="not in the store|does not match"):
            await push_to_store(via_proxy, src, "mnist", 1, options=TEST_OPTIONS)
    assert _keys(client, bucket, PREFIX) == []
