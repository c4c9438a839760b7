"""Model store sync against a real S3 endpoint (moto on loopback): what lands on disk,
what a model server polling the directory can see, and what each sync costs."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import stat
import threading

import pytest
from tests.harness.s3_fault_proxy_double import FaultProxyDouble
from test_modelstore_support import (  # noqa: F401  (fixtures)
    MiB,
    TEST_OPTIONS,
    ServerView,
    moto_server,
    numeric_versions,
    operator_client,
    random_bytes,
    read_tree,
    s3,
    savedmodel_files,
    upload,
    upload_version,
)

from agent.modelstore import StoreConfig, sync_model

PREFIX = "repo/mnist/"


async def test_full_sync_mirrors_every_version_with_nested_and_unicode_names(s3, tmp_path):
    client, bucket, store = s3
    v1, v2 = savedmodel_files(1), savedmodel_files(2, extra=30)
    upload_version(client, bucket, PREFIX, 1, v1)
    upload_version(client, bucket, PREFIX, 2, v2)

    result = await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)

    assert result.error is None
    assert result.versions_added == [1, 2]
    assert read_tree(tmp_path / "mnist" / "1") == v1
    assert read_tree(tmp_path / "mnist" / "2") == v2
    assert result.bytes_downloaded == sum(map(len, v1.values())) + sum(map(len, v2.values()))
    assert result.objects_listed == len(v1) + len(v2)
    # Only numeric directories are visible to a model server; the sync's files are dot-files.
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir() if not p.name.startswith(".")) == ["1", "2"]
    manifest = tmp_path / "mnist" / ".manifest.json"
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o600
    assert store.secret_key not in manifest.read_text()


async def test_noop_sync_is_listing_only(s3, tmp_path):
    client, bucket, store = s3
    upload_version(client, bucket, PREFIX, 1, savedmodel_files(1))
    upload_version(client, bucket, PREFIX, 2, savedmodel_files(2))
    await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "mnist").rglob("*") if p.is_file() and ".lock" not in p.name}

    async with FaultProxyDouble(store.endpoint_url) as proxy:
        via_proxy = StoreConfig("ois", proxy.endpoint, "us-east-1", store.access_key, store.secret_key, bucket, "repo")
        result = await sync_model(via_proxy, "mnist", tmp_path, options=TEST_OPTIONS)

    assert result.error is None
    assert result.versions_kept == [1, 2] and not result.changed
    assert result.bytes_downloaded == 0 and result.files_downloaded == 0
    # One listing of the model (it has fewer than 1,000 files): no GET or HEAD of an object.
    assert all("list-type=2" in path for _method, path, _range in proxy.log), proxy.log
    assert len(proxy.log) == 1
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before


async def test_a_model_of_many_pages_is_listed_version_by_version_and_misses_nothing(s3, tmp_path, monkeypatch):
    """Pages of 2 keys stand in for S3's 1,000: three versions of 5 files take 8 pages in
    one listing, 1 + 3 round trips version by version. Once a sync has seen that shape,
    a no-op sync is one delimited listing plus each version's pages, and a version added,
    a directory that is not a version and a version with pages of its own all come out
    as in the one-listing way."""
    from agent.modelstore import listing

    monkeypatch.setattr(listing, "PAGE_KEYS", 2)
    client, bucket, store = s3
    for v in (1, 2, 3):
        upload_version(client, bucket, PREFIX, v, savedmodel_files(v))
    first = await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)
    assert first.error is None and first.versions_added == [1, 2, 3]
    client.put_object(Bucket=bucket, Key=f"{PREFIX}drafts/notes.txt", Body=b"x")
    client.put_object(Bucket=bucket, Key=f"{PREFIX}README", Body=b"x")

    async with FaultProxyDouble(store.endpoint_url) as proxy:
        via_proxy = StoreConfig("ois", proxy.endpoint, "us-east-1", store.access_key, store.secret_key, bucket, "repo")
        again = await sync_model(via_proxy, "mnist", tmp_path, options=TEST_OPTIONS)
        assert again.error is None and again.versions_kept == [1, 2, 3] and not again.changed
        listed = [path for _method, path, _range in proxy.log]
        assert all("list-type=2" in path for path in listed), listed
        # The delimited listing: README, 1/, 2/, 3/, drafts/ on 3 pages; then 3 pages a version.
        assert sum("delimiter=%2F" in path and "prefix=repo%2Fmnist%2F&" in path + "&" for path in listed) == 3
        for v in (1, 2, 3):
            assert sum(f"prefix=repo%2Fmnist%2F{v}%2F" in path for path in listed) == 3, listed
        assert len(listed) == 3 + 3 * 3, listed
        assert not any("drafts" in path for path in listed)  # not a version: not listed

        upload_version(client, bucket, PREFIX, 4, savedmodel_files(4, extra=3))
        added = await sync_model(via_proxy, "mnist", tmp_path, options=TEST_OPTIONS)
    assert added.error is None and added.versions_added == [4]
    assert read_tree(tmp_path / "mnist" / "4") == savedmodel_files(4, extra=3)
    assert added.objects_listed == 5 * 3 + 8 + 1  # README: a loose object beside the versions

    # The same store listed the one-listing way agrees on everything.
    whole = await listing.list_model(listing_transport(store), PREFIX, executor=None)
    split = await listing.list_model(listing_transport(store), PREFIX, executor=None, last_shape=[5] * 4)
    assert whole.versions == split.versions and sorted(whole.versions) == [1, 2, 3, 4]
    assert whole.ignored == split.ignored == {f"{PREFIX}drafts/": "not a numeric version directory"}


def listing_transport(store):
    from agent.modelstore.transport import transport_for

    return transport_for(store, TEST_OPTIONS)


async def test_an_unchanged_listing_is_not_parsed_yet_a_version_removed_by_hand_comes_back(s3, tmp_path, monkeypatch):
    from agent.modelstore import listing

    client, bucket, store = s3
    upload_version(client, bucket, PREFIX, 1, savedmodel_files(1))
    upload_version(client, bucket, PREFIX, 2, savedmodel_files(2))
    assert (await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)).versions_added == [1, 2]
    parsed = []
    real_parse = listing._parse
    monkeypatch.setattr(listing, "_parse", lambda headers, body: parsed.append(1) or real_parse(headers, body))
    listing._memos.clear()  # as in a new process (the CLI)

    again = await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)
    assert again.error is None and again.versions_kept == [1, 2] and not again.changed
    assert parsed == []  # the listing's digest is the one recorded after the last complete sync

    shutil.rmtree(tmp_path / "mnist" / "2")  # behind the sync's back
    restored = await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)
    assert restored.error is None and restored.versions_added == [2] and parsed
    assert read_tree(tmp_path / "mnist" / "2") == savedmodel_files(2)

    upload_version(client, bucket, PREFIX, 3, savedmodel_files(3))  # a new listing is parsed
    assert (await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)).versions_added == [3]


async def test_incremental_sync_adds_only_the_new_version(s3, tmp_path):
    client, bucket, store = s3
    upload_version(client, bucket, PREFIX, 1, savedmodel_files(1))
    await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)
    inode_v1 = (tmp_path / "mnist" / "1").stat().st_ino

    v3 = savedmodel_files(3)
    upload_version(client, bucket, PREFIX, 3, v3)
    result = await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)

    assert result.versions_added == [3] and result.versions_kept == [1]
    assert result.bytes_downloaded == sum(map(len, v3.values()))
    assert read_tree(tmp_path / "mnist" / "3") == v3
    assert (tmp_path / "mnist" / "1").stat().st_ino == inode_v1  # untouched


async def test_version_removed_from_store_is_removed_locally_but_never_the_last(s3, tmp_path):
    client, bucket, store = s3
    upload_version(client, bucket, PREFIX, 1, savedmodel_files(1))
    upload_version(client, bucket, PREFIX, 2, savedmodel_files(2))
    await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)

    for rel in savedmodel_files(1):
        client.delete_object(Bucket=bucket, Key=f"{PREFIX}1/{rel}")
    result = await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)
    assert result.versions_removed == [1]
    assert numeric_versions(tmp_path / "mnist") == [2]

    # The store loses every version: the node keeps serving the last one it has.
    for rel in savedmodel_files(2):
        client.delete_object(Bucket=bucket, Key=f"{PREFIX}2/{rel}")
    result = await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)
    assert numeric_versions(tmp_path / "mnist") == [2]
    assert result.versions_removed == []
    assert "no versions of model 'mnist'" in result.error


async def test_object_changed_in_place_replaces_the_version_atomically(s3, tmp_path):
    client, bucket, store = s3
    old = savedmodel_files(1, extra=40)
    upload_version(client, bucket, PREFIX, 1, old)
    await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)
    live_inode = (tmp_path / "mnist" / "1").stat().st_ino

    new = dict(old)
    new["variables/variables.data-00000-of-00001"] = random_bytes(90_000, 99)
    upload(client, bucket, f"{PREFIX}1/variables/variables.data-00000-of-00001", new["variables/variables.data-00000-of-00001"])
    with ServerView(tmp_path / "mnist", {1: [old, new]}) as view:
        result = await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)

    assert view.violations == []
    assert result.versions_replaced == [1]
    assert read_tree(tmp_path / "mnist" / "1") == new
    # Only the changed object travelled; the others were taken from the old version.
    assert result.bytes_downloaded == 90_000
    assert result.bytes_reused == sum(len(b) for rel, b in old.items() if rel != "variables/variables.data-00000-of-00001")
    # The live directory was swapped, not written into.
    assert (tmp_path / "mnist" / "1").stat().st_ino != live_inode
    assert not any((tmp_path / "mnist" / ".staging").iterdir())


async def test_multipart_objects_are_fetched_in_ranges_and_verified_part_wise(s3, tmp_path):
    client, bucket, store = s3
    uniform = random_bytes(20 * MiB, 1)  # 8 + 8 + 4 MiB parts
    files = {"saved_model.pb": b"graph", "variables/variables.data-00000-of-00001": uniform}
    upload_version(client, bucket, PREFIX, 1, files, part_size=8 * MiB)
    # Parts of different sizes (allowed by S3, produced by some tools): 5, 6, then 1 MiB.
    uneven = random_bytes(12 * MiB, 2)
    key = f"{PREFIX}1/variables/uneven.bin"
    mpu = client.create_multipart_upload(Bucket=bucket, Key=key)
    parts, start = [], 0
    for n, size in enumerate((5 * MiB, 6 * MiB, 1 * MiB), start=1):
        part = client.upload_part(Bucket=bucket, Key=key, UploadId=mpu["UploadId"], PartNumber=n, Body=uneven[start:start + size])
        parts.append({"PartNumber": n, "ETag": part["ETag"]})
        start += size
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=mpu["UploadId"], MultipartUpload={"Parts": parts})
    files["variables/uneven.bin"] = uneven

    async with FaultProxyDouble(store.endpoint_url) as proxy:
        via_proxy = StoreConfig("ois", proxy.endpoint, "us-east-1", store.access_key, store.secret_key, bucket, "repo")
        result = await sync_model(via_proxy, "mnist", tmp_path, options=TEST_OPTIONS)

    assert result.error is None, result.error
    assert read_tree(tmp_path / "mnist" / "1") == files
    ranged = [r for m, p, r in proxy.log if m == "GET" and "variables.data" in p]
    assert len(ranged) >= 2 and all(r.startswith("bytes=") for r in ranged)
    # Every range starts on a part boundary (8 MiB), so each part is hashed as it streams.
    assert all(int(r[6:].split("-")[0]) % (8 * MiB) == 0 for r in ranged)


async def test_interrupted_sync_resumes_keeping_verified_files(s3, tmp_path):
    client, bucket, store = s3
    files = savedmodel_files(5, extra=120)
    upload_version(client, bucket, PREFIX, 5, files)
    total = sum(map(len, files.values()))

    task = asyncio.create_task(sync_model(store, "mnist", tmp_path, options=dataclasses.replace(TEST_OPTIONS, concurrency=2)))
    journal = tmp_path / "mnist" / ".staging" / "5.journal"
    while not (journal.exists() and journal.read_text().count("\n") > 20):
        await asyncio.sleep(0.005)
    task.cancel()  # as the agent does when the model changes or it stops
    with pytest.raises(asyncio.CancelledError):
        await task
    assert numeric_versions(tmp_path / "mnist") == []

    result = await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)
    assert result.error is None and result.versions_added == [5]
    assert read_tree(tmp_path / "mnist" / "5") == files
    assert result.bytes_reused > 0
    assert result.bytes_downloaded + result.bytes_reused == total


async def test_unsafe_keys_are_ignored_and_dot_dot_never_escapes(s3, tmp_path):
    client, bucket, store = s3
    upload_version(client, bucket, PREFIX, 1, {"model.onnx": b"x" * 10})
    upload(client, bucket, f"{PREFIX}1/../../escape.txt", b"evil")
    upload(client, bucket, f"{PREFIX}1/a//b", b"evil")
    upload(client, bucket, f"{PREFIX}latest/model.onnx", b"not a version")
    result = await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)
    assert result.error is None
    assert read_tree(tmp_path / "mnist" / "1") == {"model.onnx": b"x" * 10}
    assert not any(p.name == "escape.txt" for p in tmp_path.rglob("*"))
    assert numeric_versions(tmp_path / "mnist") == [1]

    bad = await sync_model(store, "../outside", tmp_path / "models", options=TEST_OPTIONS)
    assert "invalid model name" in bad.error and not (tmp_path / "outside").exists()


async def test_manifest_loss_re_downloads_instead_of_trusting_unknown_files(s3, tmp_path):
    client, bucket, store = s3
    files = savedmodel_files(1)
    upload_version(client, bucket, PREFIX, 1, files)
    await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)
    (tmp_path / "mnist" / ".manifest.json").unlink()
    (tmp_path / "mnist" / "1" / "saved_model.pb").write_bytes(b"tampered")

    result = await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)
    assert result.versions_replaced == [1]
    assert read_tree(tmp_path / "mnist" / "1") == files


async def test_local_file_deleted_behind_the_syncs_back_is_restored(s3, tmp_path):
    client, bucket, store = s3
    files = savedmodel_files(1)
    upload_version(client, bucket, PREFIX, 1, files)
    await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)
    os.unlink(tmp_path / "mnist" / "1" / "variables" / "variables.index")

    result = await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)
    assert result.versions_replaced == [1]
    assert read_tree(tmp_path / "mnist" / "1") == files


async def test_object_replaced_between_listing_and_download_is_not_taken(s3, tmp_path):
    client, bucket, store = s3
    upload_version(client, bucket, PREFIX, 1, {"model.onnx": b"old" * 100})
    from agent.modelstore.download import Counters, FetchError, Fetcher
    from agent.modelstore.etag import parse_etag
    from agent.modelstore.listing import RemoteObject
    from agent.modelstore.transport import transport_for

    listed = client.head_object(Bucket=bucket, Key=f"{PREFIX}1/model.onnx")
    obj = RemoteObject(f"{PREFIX}1/model.onnx", "model.onnx", 300, parse_etag(listed["ETag"]))
    upload(client, bucket, obj.key, b"new" * 100)  # same size, other bytes
    fetcher = Fetcher(transport_for(store, TEST_OPTIONS), TEST_OPTIONS, threading.Event(), Counters())
    with pytest.raises(FetchError) as failure:
        fetcher.fetch_whole(obj, tmp_path / "model.onnx")
    assert failure.value.final and "PreconditionFailed" in str(failure.value)


async def test_large_object_is_verified_part_by_part_and_resumes_at_the_part_level(s3, tmp_path):
    client, bucket, store = s3
    part = 5 * MiB
    data = random_bytes(6 * part, 7)
    upload_version(client, bucket, PREFIX, 1, {"model.onnx": data}, part_size=part)
    one_stream = dataclasses.replace(TEST_OPTIONS, multipart_streams=1, object_attempts=3)
    journal = tmp_path / "mnist" / ".staging" / "1.journal"

    async with FaultProxyDouble(store.endpoint_url) as proxy:
        via_proxy = dataclasses.replace(store, endpoint_url=proxy.endpoint)
        # Every body is cut off half-way: each attempt keeps the whole parts it received,
        # and the next one asks only for the parts still missing.
        proxy.inject("truncate", path_contains="model.onnx", times=100)
        failed = await sync_model(via_proxy, "mnist", tmp_path, options=one_stream)
        assert failed.error and numeric_versions(tmp_path / "mnist") == []
        ranges = [r for m, p, r in proxy.log if m == "GET" and "model.onnx" in p]
        assert ranges == ["", f"bytes={3 * part}-{6 * part - 1}", f"bytes={4 * part}-{6 * part - 1}"]
        assert journal.read_text().count('"part"') == 5  # parts 1-5 written and hashed

        proxy.faults.clear()
        proxy.log.clear()
        resumed = await sync_model(via_proxy, "mnist", tmp_path, options=one_stream)
    assert resumed.error is None and resumed.versions_added == [1]
    assert [r for m, p, r in proxy.log if m == "GET" and "model.onnx" in p] == [f"bytes={5 * part}-{6 * part - 1}"]
    assert (resumed.bytes_downloaded, resumed.bytes_reused) == (part, 5 * part)
    assert (tmp_path / "mnist" / "1" / "model.onnx").read_bytes() == data


@pytest.mark.parametrize("crc32,named", [(True, "CRC32 checksum"), (False, "multipart ETag")])
async def test_a_part_that_arrives_wrong_fails_the_file_and_the_next_sync_fetches_it_afresh(s3, tmp_path, crc32, named):
    _, bucket, store = s3
    client = operator_client(store.endpoint_url, crc32=crc32)
    part = 5 * MiB
    data = random_bytes(4 * part, 8)
    upload_version(client, bucket, PREFIX, 1, {"model.onnx": data}, part_size=part)
    two_streams = dataclasses.replace(TEST_OPTIONS, multipart_streams=2, object_attempts=1)
    async with FaultProxyDouble(store.endpoint_url) as proxy:
        via_proxy = dataclasses.replace(store, endpoint_url=proxy.endpoint)
        # One byte of one range changes in transit: its part's digest, and so the object's
        # checksum (the store's CRC32, or else its multipart ETag), differ.
        proxy.inject("flip", path_contains="model.onnx", times=1)
        caught = await sync_model(via_proxy, "mnist", tmp_path, options=two_streams)
        assert caught.error and f"does not match its {named}" in caught.error
        assert numeric_versions(tmp_path / "mnist") == []
        assert not (tmp_path / "mnist" / ".staging" / "1" / "model.onnx").exists()  # no part of it is trusted
        proxy.log.clear()
        fresh = await sync_model(via_proxy, "mnist", tmp_path, options=two_streams)
    assert fresh.error is None and fresh.bytes_reused == 0 and fresh.bytes_downloaded == len(data)
    assert sorted(r for m, p, r in proxy.log if m == "GET" and "model.onnx" in p) == [
        f"bytes=0-{2 * part - 1}", f"bytes={2 * part}-{4 * part - 1}"]
    assert (tmp_path / "mnist" / "1" / "model.onnx").read_bytes() == data


@pytest.mark.parametrize("kind,endpoint", [("ois", "http://127.0.0.1:9"), ("minio", "http://10.1.2.3:9000"),
                                           ("ois", "https://s3.pek3b.example.com:443")])
def test_requests_are_signed_as_botocore_signs_them(kind, endpoint, monkeypatch):
    import calendar
    import time

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from agent.modelstore import signing
    from agent.modelstore.client import make_client

    store = StoreConfig(kind, endpoint, "pek3b", "AKIAEXAMPLE", "secret/key+x", "models", "repo")
    signer = signing.Signer(store)
    # The URL layout (endpoint, addressing style) is the one botocore chooses.
    presigned = make_client(store, TEST_OPTIONS).generate_presigned_url(
        "get_object", Params={"Bucket": "models", "Key": "k"}, ExpiresIn=60)
    assert presigned.split("?", 1)[0] == signer.base_url + "k"
    for key, params in (("repo/mnist/1/saved_model.pb", None),
                        ("repo/mnist/1/assets/vocab 词表.txt", None),
                        ("repo/a~b!'()*;:@&=$,?#[]+%.bin", None),
                        ("", {"list-type": "2", "prefix": "repo/a b+c/", "delimiter": "/", "encoding-type": "url",
                              "continuation-token": "x/y+z=="})):
        url, headers = signer.sign(key, params)
        reference = AWSRequest(method="GET", url=url, headers={"x-amz-content-sha256": signing.EMPTY_SHA256})
        S3SigV4Auth(Credentials("AKIAEXAMPLE", "secret/key+x"), "s3", "pek3b").add_auth(reference)
        stamp = reference.headers["X-Amz-Date"]
        monkeypatch.setattr(signing, "_now", lambda: calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ")))
        url, headers = signer.sign(key, params)  # at the reference's instant
        assert headers["Authorization"] == reference.headers["Authorization"]
        assert headers["x-amz-date"] == stamp


def test_a_store_keeps_one_transport_and_closes_those_it_drops(s3):
    """The daemon's periodic syncs reuse one connection pool per store; past four stores
    the least recently used pool is closed, not leaked."""
    from agent.modelstore.config import PerStore
    from agent.modelstore.transport import Transport

    _client, _bucket, store = s3
    closed = []
    shared = PerStore(Transport, size=4, close=lambda t: closed.append(t) or t.close())
    first = shared.get(store, TEST_OPTIONS)
    assert shared.get(store, TEST_OPTIONS) is first
    others = [shared.get(dataclasses.replace(store, bucket=f"other-{i}"), TEST_OPTIONS) for i in range(4)]
    assert closed == [first]  # the least recently used of five
    assert shared.get(dataclasses.replace(store, bucket="other-3"), TEST_OPTIONS) is others[3]


async def test_against_a_store_that_serves_one_request_at_a_time_the_sync_keeps_few_in_flight(s3, tmp_path, monkeypatch):
    # moto answers one request after the other: past a few in flight, more only queue.
    from agent.modelstore import download, inflight

    limits: list[inflight.InFlightLimit] = []

    class Recorded(inflight.InFlightLimit):
        def __init__(self, maximum: int):
            super().__init__(maximum)
            limits.append(self)

    monkeypatch.setattr(download, "InFlightLimit", Recorded)
    client, bucket, store = s3
    files = {f"part-{i:03d}.bin": random_bytes(1024, i) for i in range(300)}
    upload_version(client, bucket, PREFIX, 1, files)

    result = await sync_model(store, "mnist", tmp_path, options=TEST_OPTIONS)

    assert result.error is None and read_tree(tmp_path / "mnist" / "1") == files
    assert len(limits) == 1 and limits[0].maximum == TEST_OPTIONS.concurrency == 16
    assert 1 <= limits[0].limit < 16
