"""The model store as the agent and the operator use it: store settings from metadata,
the periodic syncer, seeding the model_repo bucket, and `inference-agent sync`."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_modelstore_support import (  # noqa: F401  (fixtures)
    ACCESS_KEY,
    SECRET_KEY,
    TEST_OPTIONS,
    MotoServer,
    moto_server,
    numeric_versions,
    operator_client,
    read_tree,
    s3,
    savedmodel_files,
    upload_version,
)

from agent.metrics import Metrics
from agent.modelstore import ModelSyncer, StoreConfig, seed_bucket, store_config_for, sync_model
from agent.state import parse_cluster_state, normalize_tree
from tests.harness.node import until


def _tree(serving_ip: str, repo_ip: str | None, **env: str) -> dict:
    hosts = {"model_serving": {"i-serve1": {"ip": serving_ip, "instance_id": "i-serve1", "role": "model_serving", "sid": "1"}}}
    if repo_ip:
        hosts["model_repo"] = {"i-repo1": {"ip": repo_ip, "instance_id": "i-repo1", "role": "model_repo", "sid": "2"}}
    base_env = {"model.name": "mnist", "model.base.path": "s3://models/repo", "s3.type": "none"}
    return normalize_tree({
        "host": {"ip": serving_ip, "instance_id": "i-serve1", "role": "model_serving", "sid": "1"},
        "hosts": hosts,
        "env": {**base_env, **env},
    })


def test_store_config_from_metadata(ip_factory):
    serving, repo = ip_factory(), ip_factory()
    assert store_config_for(parse_cluster_state(_tree(serving, repo))) is None

    minio = store_config_for(parse_cluster_state(_tree(
        serving, repo, **{"s3.type": "minio", "s3.access.key": "AK", "s3.secret.key": "SK-secret", "model.base.path": "s3://models/team/a/"})))
    assert minio == StoreConfig("minio", f"http://{repo}:9000", "us-east-1", "AK", "SK-secret", "models", "team/a")
    assert "SK-secret" not in repr(minio) and "SK-secret" not in json.dumps(minio.public())
    assert minio.model_prefix("mnist") == "team/a/mnist/"

    ois = store_config_for(parse_cluster_state(_tree(
        serving, None, **{"s3.type": "ois", "s3.endpoint": "https://s3.pek3b.example.com/", "s3.region": "pek3b",
                          "s3.access.key": "AK", "s3.secret.key": "SK"})))
    assert (ois.kind, ois.endpoint_url, ois.region, ois.bucket, ois.prefix) == ("ois", "https://s3.pek3b.example.com", "pek3b", "models", "repo")
    assert ois.model_prefix("mnist") == "repo/mnist/"


async def test_syncer_syncs_on_change_periodically_and_reports_status(s3, tmp_path):
    client, bucket, store = s3
    upload_version(client, bucket, "repo/mnist/", 1, savedmodel_files(1))
    upload_version(client, bucket, "repo/resnet/", 3, {"model.onnx": b"r" * 100})
    metrics = Metrics()
    results, arrived = [], []

    def on_result(result) -> None:
        results.append(result)
        arrived.append(time.monotonic())

    syncer = ModelSyncer(tmp_path, metrics, options=TEST_OPTIONS, on_result=on_result)
    assert syncer.status()["state"] == "disabled"
    task = asyncio.create_task(syncer.run())
    try:
        syncer.update(store, "mnist", 1)
        await until(lambda: len(results) == 1, 15)
        assert numeric_versions(tmp_path / "mnist") == [1]
        status = syncer.status()
        assert status["state"] == "idle" and status["versions"] == [1] and status["last_error"] is None
        assert SECRET_KEY not in json.dumps(status) and ACCESS_KEY not in json.dumps(status)
        assert metrics.registry.get_sample_value("agent_model_sync_bytes_total") > 0

        # The same parameters again (every snapshot calls update): no extra sync right
        # away, the next one comes with the interval (1 s; a busy machine only delays it).
        syncer.update(store, "mnist", 1)
        await until(lambda: len(results) == 2, 15)
        assert arrived[1] - arrived[0] >= 0.9, arrived

        # A version uploaded later arrives with the periodic sync.
        upload_version(client, bucket, "repo/mnist/", 2, savedmodel_files(2))
        await until(lambda: numeric_versions(tmp_path / "mnist") == [1, 2], 15)

        # A model switch syncs at once, without waiting for the interval.
        syncer.update(store, "resnet", 3600)
        await until(lambda: numeric_versions(tmp_path / "resnet") == [3], timeout=5)
        assert syncer.status()["model"] == "resnet"

        # A missing model is an error in status and metrics, and nothing is deleted.
        syncer.update(store, "no-such-model", 3600)
        await until(lambda: results[-1].model == "no-such-model", 15)
        assert syncer.status()["state"] == "error" and "no versions" in syncer.status()["last_error"]
        assert metrics.registry.get_sample_value("agent_model_sync_errors_total") == 1

        syncer.update(None, "mnist", 30)
        await until(lambda: syncer.status()["state"] == "disabled", 15)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_version_still_uploading_waits_until_it_settles(s3, tmp_path):
    client, bucket, store = s3
    upload_version(client, bucket, "repo/mnist/", 1, savedmodel_files(1))
    patient = dataclasses.replace(TEST_OPTIONS, settle_seconds=60)
    result = await sync_model(store, "mnist", tmp_path, options=patient)
    assert result.versions_pending == [1] and 55 < result.retry_after <= 60
    assert result.error is None and numeric_versions(tmp_path / "mnist") == []

    # The syncer looks again as soon as the version has been quiet long enough.
    results = []
    syncer = ModelSyncer(tmp_path, Metrics(), options=dataclasses.replace(TEST_OPTIONS, settle_seconds=1.5), on_result=results.append)
    task = asyncio.create_task(syncer.run())
    try:
        syncer.update(store, "mnist", 3600)
        await until(lambda: any(r.versions_added == [1] for r in results), timeout=10)
        assert numeric_versions(tmp_path / "mnist") == [1]
        assert results[0].versions_pending in ([1], [])  # pending unless the upload was already 1.5 s old
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_syncer_abandons_a_sync_for_a_model_no_longer_wanted(s3, tmp_path):
    client, bucket, store = s3
    upload_version(client, bucket, "repo/big/", 1, savedmodel_files(1, extra=300))
    upload_version(client, bucket, "repo/small/", 1, {"model.onnx": b"s"})
    results = []
    syncer = ModelSyncer(tmp_path, Metrics(), options=dataclasses.replace(TEST_OPTIONS, concurrency=1), on_result=results.append)
    task = asyncio.create_task(syncer.run())
    try:
        syncer.update(store, "big", 30)
        await until(lambda: (tmp_path / "big" / ".staging" / "1.journal").exists(), 15)
        syncer.update(store, "small", 30)
        await until(lambda: [r.model for r in results] == ["small"], 15)
        assert numeric_versions(tmp_path / "small") == [1]
        assert numeric_versions(tmp_path / "big") == []  # never half-published
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_seed_bucket_creates_bucket_and_uploads_absent_models_once(moto_server, tmp_path):
    src = tmp_path / "builtin"
    for name, version, files in (("half_plus_two", 1, {"model.onnx": b"h" * 50, "extra/notes.txt": b"n"}),
                                 ("resnet", 2, {"model.onnx": b"r" * 20_000_000})):
        for rel, data in files.items():
            path = src / name / str(version) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    (src / "half_plus_two" / ".manifest.json").write_text("{}")  # a synced dir's private files stay home
    bucket = f"seed-{os.urandom(4).hex()}"
    store = StoreConfig("minio", moto_server.endpoint, "us-east-1", ACCESS_KEY, SECRET_KEY, bucket, "models")

    assert await seed_bucket(store, src) == ["half_plus_two", "resnet"]
    assert await seed_bucket(store, src) == []  # idempotent

    keys = sorted(o["Key"] for o in operator_client(moto_server.endpoint).list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["models/half_plus_two/1/extra/notes.txt", "models/half_plus_two/1/model.onnx", "models/resnet/2/model.onnx"]
    # What was seeded syncs back byte for byte (resnet went up in 16 MiB parts).
    result = await sync_model(store, "resnet", tmp_path / "models", options=TEST_OPTIONS)
    assert result.error is None
    assert read_tree(tmp_path / "models" / "resnet" / "2") == {"model.onnx": b"r" * 20_000_000}


def _cli(metadata: Path, data_dir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    return subprocess.run(
        [sys.executable, "-m", "agent", "sync", "--metadata", str(metadata), "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=120, env=env,
    )


def test_cli_sync_from_minio_on_the_model_repo_node(ip_factory, tmp_path, data_dir):
    serving, repo = ip_factory(), ip_factory()
    server = MotoServer(host=repo, port=9000).start()  # MinIO's address on the model_repo node
    try:
        client = operator_client(server.endpoint)
        client.create_bucket(Bucket="models")
        files = savedmodel_files(4)
        upload_version(client, "models", "repo/mnist/", 4, files)
        metadata = tmp_path / "self.yaml"
        env = {"s3.type": "minio", "s3.access.key": ACCESS_KEY, "s3.secret.key": SECRET_KEY}
        metadata.write_text(yaml.safe_dump(_tree(serving, repo, **env)))

        done = _cli(metadata, data_dir)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert summary["versions_added"] == [4] and summary["error"] is None
        assert read_tree(data_dir / "models" / "mnist" / "4") == files
        assert SECRET_KEY not in done.stdout + done.stderr

        again = json.loads(_cli(metadata, data_dir).stdout)
        assert again["versions_kept"] == [4] and again["bytes_downloaded"] == 0

        metadata.write_text(yaml.safe_dump(_tree(serving, repo, **env, **{"model.base.path": "s3://nobucket/x"})))
        failed = _cli(metadata, data_dir)
        assert failed.returncode == 1
        assert "nobucket" in failed.stderr and server.endpoint in failed.stderr and SECRET_KEY not in failed.stderr
    finally:
        server.stop()

    metadata.write_text(yaml.safe_dump(_tree(serving, repo)))
    skipped = _cli(metadata, data_dir)
    assert skipped.returncode == 0 and "nothing to sync" in json.loads(skipped.stdout)["skipped"]

    metadata.write_text(yaml.safe_dump(_tree(serving, None, **{"s3.type": "minio", "s3.access.key": "a", "s3.secret.key": "b"})))
    invalid = _cli(metadata, data_dir)
    assert invalid.returncode == 2 and "model_repo" in invalid.stderr
