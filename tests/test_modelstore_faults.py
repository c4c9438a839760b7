"""Model store sync under faults: a store that dies, resets connections, cuts bodies
short, answers 500/503, or refuses the credentials. A model server polling the model
directory must never see a partial version, and the next sync must finish the job
without fetching again what was already verified."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import boto3
import pytest
from tests.harness.s3_fault_proxy_double import FaultProxyDouble
from test_modelstore_support import (  # noqa: F401  (fixtures)
    ACCESS_KEY,
    SECRET_KEY,
    TEST_OPTIONS,
    MiB,
    MotoServer,
    ServerView,
    moto_server,
    numeric_versions,
    operator_client,
    random_bytes,
    read_tree,
    s3,
    savedmodel_files,
    upload_version,
)

from agent.modelstore import StoreConfig, SyncOptions, sync_model

PREFIX = "repo/mnist/"


def _via(proxy: FaultProxyDouble, store: StoreConfig) -> StoreConfig:
    return StoreConfig("ois", proxy.endpoint, "us-east-1", store.access_key, store.secret_key, store.bucket, store.prefix)


@pytest.mark.parametrize("kind", ["reset", "truncate", "500", "503"])
async def test_transient_faults_are_retried_within_the_sync(s3, tmp_path, kind):
    client, bucket, store = s3
    files = savedmodel_files(1, extra=10)
    big = random_bytes(17 * MiB, 3)
    files["variables/big.data"] = big
    upload_version(client, bucket, PREFIX, 1, files, part_size=8 * MiB)

    async with FaultProxyDouble(store.endpoint_url) as proxy:
        small = proxy.inject(kind, path_contains="saved_model.pb")
        ranged = proxy.inject(kind, path_contains="big.data")
        listing = proxy.inject(kind, path_contains="", method="GET") if kind in ("500", "503") else None
        with ServerView(tmp_path / "mnist", {1: [files]}) as view:
            result = await sync_model(_via(proxy, store), "mnist", tmp_path, options=TEST_OPTIONS)

    assert small.fired == 1 and ranged.fired == 1 and (listing is None or listing.fired == 1)
    assert result.error is None, result.error
    assert view.violations == []
    assert read_tree(tmp_path / "mnist" / "1") == files


async def test_persistent_fault_leaves_no_partial_version_and_next_sync_reuses_verified_files(s3, tmp_path):
    client, bucket, store = s3
    files = savedmodel_files(1, extra=20)
    upload_version(client, bucket, PREFIX, 1, files)
    broken = "variables/variables.index"

    async with FaultProxyDouble(store.endpoint_url) as proxy:
        proxy.inject("503", path_contains=broken, times=1000)
        with ServerView(tmp_path / "mnist", {1: [files]}) as view:
            failed = await sync_model(_via(proxy, store), "mnist", tmp_path, options=TEST_OPTIONS)
        assert view.violations == [] and view.seen == set()
        assert failed.error and broken in failed.error and "version 1" in failed.error
        assert numeric_versions(tmp_path / "mnist") == []

        proxy.faults.clear()
        result = await sync_model(_via(proxy, store), "mnist", tmp_path, options=TEST_OPTIONS)

    assert result.error is None and result.versions_added == [1]
    assert result.bytes_downloaded == len(files[broken])  # everything else was already verified
    assert read_tree(tmp_path / "mnist" / "1") == files


async def test_endpoint_killed_mid_download(tmp_path):
    server = MotoServer().start()
    try:
        files = savedmodel_files(7, extra=200)
        big = random_bytes(24 * MiB, 7)
        files["variables/big.data"] = big

        def seed(endpoint: str) -> str:
            client = operator_client(endpoint)
            client.create_bucket(Bucket="models")
            upload_version(client, "models", PREFIX, 7, files, part_size=8 * MiB)
            return "models"

        seed(server.endpoint)
        store = StoreConfig("minio", server.endpoint, "us-east-1", ACCESS_KEY, SECRET_KEY, "models", "repo")
        options = SyncOptions(concurrency=2, multipart_streams=2, request_attempts=2, object_attempts=2, connect_timeout=1, read_timeout=5,
                              settle_seconds=0)
        journal = tmp_path / "mnist" / ".staging" / "7.journal"
        with ServerView(tmp_path / "mnist", {7: [files]}) as view:
            task = asyncio.create_task(sync_model(store, "mnist", tmp_path, options=options))
            while not (journal.exists() and journal.read_text().count("\n") > 30) and not task.done():
                await asyncio.sleep(0.002)
            server.kill()
            failed = await task
        assert view.violations == [] and view.seen == set()
        assert failed.error and server.endpoint in failed.error and "models" in failed.error
        assert SECRET_KEY not in failed.error

        # The store comes back (same address, same objects); the sync picks up where it stopped.
        server = MotoServer(port=server.port).start()
        seed(server.endpoint)
        result = await sync_model(store, "mnist", tmp_path, options=options)
        assert result.error is None and result.versions_added == [7]
        assert read_tree(tmp_path / "mnist" / "7") == files
        assert result.bytes_reused > 0
        assert result.bytes_downloaded + result.bytes_reused == sum(map(len, files.values()))
    finally:
        server.stop()


async def test_wrong_credentials_give_a_clear_error_without_the_secret(tmp_path):
    server = MotoServer().start()
    try:
        admin = boto3.client("iam", endpoint_url=server.endpoint, aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1")
        admin.create_user(UserName="agent")
        admin.put_user_policy(
            UserName="agent",
            PolicyName="s3",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}),
        )
        key = admin.create_access_key(UserName="agent")["AccessKey"]
        good = operator_client(server.endpoint, key["AccessKeyId"], key["SecretAccessKey"])
        good.create_bucket(Bucket="models")
        upload_version(good, "models", PREFIX, 1, savedmodel_files(1))
        # From now on moto checks every signature.
        _moto_auth(server, "0")

        wrong_secret = "WRONG-secret-value-123456"
        bad = StoreConfig("minio", server.endpoint, "us-east-1", key["AccessKeyId"], wrong_secret, "models", "repo")
        result = await sync_model(bad, "mnist", tmp_path, options=TEST_OPTIONS)
        assert result.error is not None
        assert server.endpoint in result.error and "'models'" in result.error
        assert "access denied" in result.error and "s3.secret.key" in result.error
        assert wrong_secret not in result.error and wrong_secret not in repr(bad)
        assert numeric_versions(tmp_path / "mnist") == []

        unknown = StoreConfig("minio", server.endpoint, "us-east-1", "AKIAUNKNOWN", wrong_secret, "models", "repo")
        result = await sync_model(unknown, "mnist", tmp_path, options=TEST_OPTIONS)
        assert result.error and "access denied" in result.error and wrong_secret not in result.error

        # moto's signature check rejects every listing with a query string, even a correct
        # one, so the positive control runs with checks off again.
        _moto_auth(server, "inf")
        right = StoreConfig("minio", server.endpoint, "us-east-1", key["AccessKeyId"], key["SecretAccessKey"], "models", "repo")
        result = await sync_model(right, "mnist", tmp_path, options=TEST_OPTIONS)
        assert result.error is None and result.versions_added == [1]
    finally:
        server.stop()


def _moto_auth(server: MotoServer, unauthenticated_requests: str) -> None:
    """Make moto check signatures after that many more requests ("inf": never)."""
    request = urllib.request.Request(
        f"{server.endpoint}/moto-api/reset-auth",
        data=unauthenticated_requests.encode(),
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    urllib.request.urlopen(request).read()


async def test_missing_bucket_and_dead_endpoint_are_named(moto_server, tmp_path):
    store = StoreConfig("ois", moto_server.endpoint, "us-east-1", ACCESS_KEY, SECRET_KEY, "no-such-bucket-here", "")
    result = await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)
    assert "no-such-bucket-here" in result.error and "does not exist" in result.error

    dead = StoreConfig("ois", "http://127.0.0.1:9", "us-east-1", ACCESS_KEY, SECRET_KEY, "models", "")
    result = await sync_model(dead, "mnist", tmp_path, options=TEST_OPTIONS)
    assert "cannot connect to http://127.0.0.1:9" in result.error and "'models'" in result.error


_LISTING = ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            '<EncodingType>url</EncodingType><IsTruncated>{truncated}</IsTruncated>{token}{items}</ListBucketResult>')


@pytest.mark.parametrize("answer,expected", [
    (b"<ListBucketResult><unclosed>", "ParseError"),
    (b"<" + b"x" * (17 << 20) + b"/>", "listing page of more than 16 MiB"),
    (_LISTING.format(truncated="true", token="", items="").encode(), "without a continuation token"),
    (_LISTING.format(truncated="true", token="<NextContinuationToken>again</NextContinuationToken>",
                     items="").encode(), "not a model"),
    (_LISTING.format(truncated="false", token="", items="<Contents><Key>repo/mnist/1/a</Key><Size>lots</Size>"
                     "</Contents>").encode(), "invalid literal"),
])
async def test_hostile_listings_fail_the_sync_with_a_named_error_and_change_nothing(s3, tmp_path, answer, expected,
                                                                                     monkeypatch):
    from agent.modelstore import listing

    monkeypatch.setattr(listing, "MAX_PAGES", 5)  # a store that never stops paging
    client, bucket, store = s3
    upload_version(client, bucket, PREFIX, 1, savedmodel_files(1))
    assert (await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)).versions_added == [1]
    async with FaultProxyDouble(store.endpoint_url) as proxy:
        proxy.inject("replace", path_contains=f"/{bucket}", times=1000, body=answer)
        result = await sync_model(_via(proxy, store), "mnist", tmp_path, options=TEST_OPTIONS)
    assert result.error and "cannot list" in result.error and expected in result.error
    assert numeric_versions(tmp_path / "mnist") == [1]
    assert read_tree(tmp_path / "mnist" / "1") == savedmodel_files(1)
