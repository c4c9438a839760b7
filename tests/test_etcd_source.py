"""The etcd source against a real etcd (Debian etcd-server): initial read, watch,
restarts, compaction, auth, TLS and several endpoints."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agent.metadata import open_source
from agent.metadata.etcd import Compacted, EtcdClient, EtcdSource, build_tree, parse_spec
from tests.harness.etcd_process import CLIENT_PORT, EtcdProcess, ports_free
from tests.harness.source_follower import SourceProcess, follow  # noqa: F401 (fixture)

PREFIX = "/clusters/cl-test"
TREE = {
    "host": {"ip": "10.0.0.5", "instance_id": "i-1", "role": "model_serving", "sid": "1"},
    "hosts": {"model_serving": {"i-1": {"ip": "10.0.0.5", "sid": "1"}}},
    "env": {"model.name": "resnet", "http.port": "8080"},
}


@pytest.fixture
def etcd_ip(ip_factory) -> str:
    for _ in range(20):
        ip = ip_factory()
        if ports_free(ip):
            return ip
    raise RuntimeError("no loopback address with 2379/2380 free")


@pytest.fixture
async def etcd(tmp_path: Path, etcd_ip: str):
    server = EtcdProcess(tmp_path / "etcd", etcd_ip)
    await server.start()
    yield server
    server.stop(signal.SIGKILL)


def test_spec_parsing():
    spec = parse_spec("etcd://user:p%40ss@10.0.0.1:2379,10.0.0.2:2379/clusters/cl-1/")
    assert spec.endpoints == ("http://10.0.0.1:2379", "http://10.0.0.2:2379")
    assert spec.prefix == "/clusters/cl-1/"
    assert (spec.username, spec.password) == ("user", "p@ss")
    assert "p@ss" not in spec.description and "user" not in spec.description
    assert parse_spec("etcds://h:2379/p").endpoints == ("https://h:2379",)
    with pytest.raises(ValueError, match="needs a port"):
        parse_spec("etcd://h/p")


def test_tree_layout_keeps_dots_and_prefers_directories():
    kvs = {"/p/env/model.name": "m", "/p/host/ip": "1.2.3.4", "/p/host": "shadowed", "/p/cmd/id": "c1",
           "/other": "x"}
    assert build_tree({k: v for k, v in kvs.items() if k.startswith("/p/")}, "/p/") == {
        "env": {"model.name": "m"}, "host": {"ip": "1.2.3.4"}, "cmd": {"id": "c1"}}


async def test_initial_tree_then_every_change(etcd, follow):
    await etcd.put_tree(PREFIX, TREE)
    await etcd.put("/clusters/cl-other/env/model.name", "not-mine")
    source = open_source(etcd.spec(PREFIX))
    assert isinstance(source, EtcdSource)
    f = follow(source)
    _, first = await f.until(lambda t: True)
    assert first.tree == TREE
    assert int(first.version) > 0 and first.source == source.description
    assert source.stale_since is None

    await etcd.put(f"{PREFIX}/env/model.name", "mnist")  # how fast: bench/propagation.py
    _, snap = await f.until(lambda t: t["env"]["model.name"] == "mnist")
    assert int(snap.version) > int(first.version)

    await etcd.put(f"{PREFIX}/hosts/model_serving/i-2/ip", "10.0.0.6")
    await f.until(lambda t: t["hosts"]["model_serving"].get("i-2") == {"ip": "10.0.0.6"})
    await etcd.delete(f"{PREFIX}/hosts/model_serving/i-2/", prefix=True)
    await etcd.delete(f"{PREFIX}/env/http.port")
    _, snap = await f.until(lambda t: "i-2" not in t["hosts"]["model_serving"] and "http.port" not in t["env"])
    assert snap.tree["env"] == {"model.name": "mnist"}


async def test_restart_and_compaction_past_the_watched_revision(etcd, follow):
    """etcd dies; when it is back, the history the source watched from is compacted
    away before the source reconnects: it must re-read and reach the latest state."""
    await etcd.put_tree(PREFIX, TREE)
    source = EtcdSource(etcd.spec(PREFIX))
    f = follow(source)
    _, first = await f.until(lambda t: True)

    etcd.stop(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while source.stale_since is None:  # the source notices etcd is gone
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    failures = source.outage.failures
    await asyncio.sleep(2.0)  # a measurement window: reconnection attempts over 2 s
    # Backed off, not busy-looping: a refused connection costs ~nothing, yet at most a few per second.
    assert source.outage.failures - failures <= 10

    await etcd.start()
    for i in range(5):
        revision = await etcd.put(f"{PREFIX}/env/model.name", f"m{i}")
    await etcd.compact(revision)
    _, snap = await f.until(lambda t: t["env"]["model.name"] == "m4", timeout=30)
    assert int(snap.version) >= revision
    assert source.stale_since is None
    # And the new watch works.
    await etcd.put(f"{PREFIX}/env/model.name", "after")
    await f.until(lambda t: t["env"]["model.name"] == "after")


async def test_watch_from_a_compacted_revision_is_reported(etcd):
    import aiohttp

    first = await etcd.put(f"{PREFIX}/env/a", "1")
    latest = await etcd.put(f"{PREFIX}/env/a", "2")
    await etcd.compact(latest)
    async with aiohttp.ClientSession() as session:
        client = EtcdClient(session, etcd.endpoint, None, None, None)
        stream = await client.watch(PREFIX + "/", first)
        try:
            with pytest.raises(Compacted, match="compacted"):
                await stream.next_events(5)
        finally:
            stream.close()
        stream = await client.watch(PREFIX + "/", latest + 1)
        stream.close()


async def test_compaction_while_watching_loses_nothing(etcd, follow):
    await etcd.put_tree(PREFIX, TREE)
    f = follow(EtcdSource(etcd.spec(PREFIX)))
    await f.until(lambda t: True)
    for i in range(20):
        revision = await etcd.put(f"{PREFIX}/env/n", str(i))
        if i % 5 == 4:
            await etcd.compact(revision)
    await f.until(lambda t: t["env"].get("n") == "19")


async def test_several_endpoints_first_one_dead(etcd, etcd_ip, ip_factory, follow):
    dead = ip_factory()  # nothing listens there
    await etcd.put_tree(PREFIX, TREE)
    source = EtcdSource(f"etcd://{dead}:{CLIENT_PORT},{etcd_ip}:{CLIENT_PORT}{PREFIX}")
    f = follow(source)
    arrived, snap = await f.until(lambda t: True, timeout=3)
    assert snap.tree == TREE


async def test_user_and_password(etcd, follow):
    await etcd.put_tree(PREFIX, TREE)
    await etcd.enable_auth("root", "s3cret")
    good = follow(EtcdSource(etcd.spec(PREFIX), username="root", password="s3cret"))
    await good.until(lambda t: t == TREE)
    await etcd.put(f"{PREFIX}/env/model.name", "authed")
    await good.until(lambda t: t["env"]["model.name"] == "authed")

    for bad_source in (EtcdSource(etcd.spec(PREFIX), username="root", password="wrong"),
                       EtcdSource(etcd.spec(PREFIX))):
        bad = follow(bad_source)
        deadline = time.monotonic() + 10
        while bad_source.stale_since is None:  # shown as an outage, not retried silently
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert bad.snapshots == []


def _make_certs(d: Path, ip: str) -> dict[str, str]:
    """A CA, a server cert for `ip` and a client cert, with the openssl command."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")
    for name, san in (("server", f"IP:{ip}"), ("client", "DNS:client")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.crt")
    return {"ca": str(d / "ca.crt"), "cert": str(d / "server.crt"), "key": str(d / "server.key"),
            "client_cert": str(d / "client.crt"), "client_key": str(d / "client.key")}


async def test_tls_with_client_certificate(tmp_path, etcd_ip, follow):
    certs_dir = tmp_path / "certs"
    certs_dir.mkdir()
    tls = _make_certs(certs_dir, etcd_ip)
    server = EtcdProcess(tmp_path / "etcd-tls", etcd_ip, tls=tls)
    await server.start()
    try:
        await server.put_tree(PREFIX, TREE)
        source = open_source(server.spec(PREFIX), ca_file=tls["ca"], cert_file=tls["client_cert"],
                             key_file=tls["client_key"])
        f = follow(source)
        await f.until(lambda t: t == TREE)
        await server.put(f"{PREFIX}/env/model.name", "tls")
        await f.until(lambda t: t["env"]["model.name"] == "tls")
    finally:
        server.stop(signal.SIGKILL)


async def test_outage_costs_no_cpu_and_changes_arrive_within_a_second_of_return(etcd):
    await etcd.put_tree(PREFIX, TREE)
    child = SourceProcess(etcd.spec(PREFIX))
    try:
        assert await child.next_tree() == TREE
        etcd.stop(signal.SIGKILL)
        await child.outage_noticed()
        cpu_before = child.cpu_seconds()
        await asyncio.sleep(3.0)  # a measurement window: CPU used over 3 s of outage
        assert child.cpu_seconds() - cpu_before < 0.15  # near zero: no busy loop
        await etcd.start()
        await etcd.put(f"{PREFIX}/env/model.name", "while-away")  # how fast: bench/propagation.py
        while (await child.next_tree(timeout=30))["env"]["model.name"] != "while-away":
            pass
    finally:
        child.stop()


async def test_a_frozen_member_is_noticed_by_the_probe(etcd, follow):
    """etcd stops answering without closing the connection (host hung, network black
    hole): the idle watch alone would wait forever; the probe notices."""
    await etcd.put_tree(PREFIX, TREE)
    source = EtcdSource(etcd.spec(PREFIX), probe_interval=0.3)
    f = follow(source)
    await f.until(lambda t: True)
    os.kill(etcd.proc.pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 8
        while source.stale_since is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert source.stale_since is not None
    finally:
        os.kill(etcd.proc.pid, signal.SIGCONT)
    await etcd.put(f"{PREFIX}/env/model.name", "thawed")
    await f.until(lambda t: t["env"]["model.name"] == "thawed", timeout=3)
