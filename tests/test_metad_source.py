"""The metad source against the metad TEST DOUBLE: long-poll, extra wake-ups, client
timeouts, restarts with a version reset, several endpoints, outages."""

from __future__ import annotations

import asyncio
import time

import pytest

from agent.metadata import open_source
from agent.metadata.metad import MetadSource, parse_endpoints
from tests.harness.metad_double import MetadDouble
from tests.harness.source_follower import SourceProcess, follow  # noqa: F401 (fixture)


def cluster(*nodes: tuple[str, str], model: str = "resnet") -> dict:
    return {
        "cluster": {"cluster_id": "cl-1"},
        "hosts": {"model_serving": {iid: {"ip": ip, "sid": str(i + 1)} for i, (iid, ip) in enumerate(nodes)}},
        "env": {"model.name": model},
    }


def test_endpoint_list_forms():
    assert parse_endpoints("http://metadata/") == ["http://metadata/self"]
    assert parse_endpoints("http://a:81/md,http://b") == ["http://a:81/md/self", "http://b/self"]
    assert parse_endpoints("https://a:81/md, b:82") == ["https://a:81/md/self", "https://b:82/md/self"]
    with pytest.raises(ValueError):
        parse_endpoints("ftp://x")


async def test_follows_every_change_once(node_ip, follow):
    async with MetadDouble(cluster(("i-1", node_ip)), ip_map={"127.0.0.1": node_ip}) as d:
        source = open_source(d.url)
        assert isinstance(source, MetadSource)
        f = follow(source)
        _, first = await f.until(lambda t: True)
        assert first.tree["host"]["instance_id"] == "i-1" and first.tree["env"]["model.name"] == "resnet"
        assert source.stale_since is None
        for i in range(5):  # one change at a time (how fast is bench/propagation.py's)
            await asyncio.sleep(0.05)  # pacing between changes (not a wait for an event)
            d.put("env/model.name", f"m{i}")
            await f.until(lambda t, i=i: t["env"]["model.name"] == f"m{i}")
        # metad wakes the poll twice per change; the source yields each tree once (the
        # second wake-up of the last change has come once the double counted its poll).
        deadline = time.monotonic() + 10
        while d.requests < 1 + 2 * 5:
            assert time.monotonic() < deadline, d.requests
            await asyncio.sleep(0.01)
        trees = [s.tree for _, s in f.snapshots]
        assert len(trees) == 6 and all(a != b for a, b in zip(trees, trees[1:]))
        # Each change costs two polls (the extra wake-up), never a busy loop.
        assert d.requests <= 1 + 2 * 5 + 1


async def test_client_timeout_polls_again(node_ip, follow):
    async with MetadDouble(cluster(("i-1", node_ip)), ip_map={"*": node_ip}) as d:
        f = follow(MetadSource(d.url, poll_timeout=0.3))
        await f.until(lambda t: True)
        await asyncio.sleep(1.0)  # a measurement window: several client-side timeouts pass
        assert 3 <= d.requests <= 6
        d.put("env/model.name", "late")
        await f.until(lambda t: t["env"]["model.name"] == "late", timeout=1)
        assert len(f.snapshots) == 2


async def test_metad_restart_with_version_reset(node_ip, follow):
    """A restarted metad counts from 1 again: the source must not wait for a version it
    already passed, and must pick up what changed while metad was down."""
    first = MetadDouble(cluster(("i-1", node_ip)), ip_map={"*": node_ip})
    await first.start()
    source = MetadSource(first.url)
    f = follow(source)
    try:
        for i in range(5):  # push the version well above 1
            first.put("env/n", str(i))
            await asyncio.sleep(0.15)
        await f.until(lambda t: t["env"].get("n") == "4")
    finally:
        await first.stop()
    deadline = time.monotonic() + 10
    while source.stale_since is None:  # the source notices metad is gone
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    second = MetadDouble(cluster(("i-1", node_ip), model="changed-while-away"), port=first.port, ip_map={"*": node_ip})
    await second.start()
    try:
        _, snap = await f.until(lambda t: t["env"]["model.name"] == "changed-while-away", timeout=30)
        assert snap.version == "1"
        assert source.stale_since is None
        # The new counter is followed too.
        second.put("env/model.name", "after")
        await f.until(lambda t: t["env"]["model.name"] == "after")
    finally:
        await second.stop()


async def test_several_endpoints(node_ip, ip_factory, follow):
    dead = f"http://{ip_factory()}:8/"  # nothing listens there
    async with MetadDouble(cluster(("i-1", node_ip)), ip_map={"*": node_ip}) as a, \
            MetadDouble(cluster(("i-1", node_ip), model="from-b"), ip_map={"*": node_ip}) as b:
        host_b = b.url.split("://")[1].rstrip("/")
        source = MetadSource(f"{dead},{a.url},{host_b}")
        assert source.endpoints[2] == f"http://{host_b}/self"
        f = follow(source)
        await f.until(lambda t: t["env"]["model.name"] == "resnet", timeout=3)
        await a.stop()
        await f.until(lambda t: t["env"]["model.name"] == "from-b", timeout=3)


async def test_local_addr_asks_as_that_node(ip_factory, follow):
    a, b = ip_factory(), ip_factory()
    async with MetadDouble(cluster(("i-a", a), ("i-b", b))) as d:
        fa = follow(MetadSource(d.url, local_addr=a))
        fb = follow(MetadSource(d.url, local_addr=b))
        await fa.until(lambda t: t["host"]["instance_id"] == "i-a")
        await fb.until(lambda t: t["host"]["instance_id"] == "i-b")


async def test_unknown_node_is_an_outage_not_a_tree(follow):
    async with MetadDouble(cluster(("i-1", "10.9.9.9"))) as d:  # the caller is no node: 404
        source = MetadSource(d.url)
        f = follow(source)
        await asyncio.sleep(0.8)  # a measurement window: requests over 0.8 s
        assert f.snapshots == [] and source.stale_since is not None
        assert d.requests <= 5


async def test_outage_costs_no_cpu_and_changes_arrive_within_a_second_of_return(node_ip):
    tree = cluster(("i-1", node_ip))
    first = MetadDouble(tree, ip_map={"*": node_ip})
    await first.start()
    child = SourceProcess(first.url)
    try:
        assert (await child.next_tree())["host"]["ip"] == node_ip
        await first.stop()
        await child.outage_noticed()
        cpu_before = child.cpu_seconds()
        await asyncio.sleep(3.0)  # a measurement window: CPU used over 3 s of outage
        assert child.cpu_seconds() - cpu_before < 0.15  # near zero: no busy loop
        tree["env"]["model.name"] = "while-away"
        second = MetadDouble(tree, port=first.port, ip_map={"*": node_ip})
        await second.start()
        try:  # at once after the return (bench/propagation.py times it; this bound catches a hang)
            assert (await child.next_tree(timeout=30))["env"]["model.name"] == "while-away"
        finally:
            await second.stop()
    finally:
        child.stop()
