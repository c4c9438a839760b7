"""The metad TEST DOUBLE itself behaves as reference/appcenter.md section 1 describes,
so that tests of the agent's metad source against it mean something."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from tests.harness.metad_double import MetadDouble

CLUSTER = {
    "cluster": {"cluster_id": "cl-1"},
    "hosts": {"model_serving": {"i-1": {"ip": "127.0.0.1", "sid": 1}, "i-2": {"ip": "127.0.0.2", "sid": 2}}},
    "env": {"model.name": "m", "enable_access_log": True, "ports": [8080, 8081]},
}
JSON = {"Accept": "application/json"}


@pytest.fixture
async def double():
    async with MetadDouble(CLUSTER) as d:
        yield d


async def get(url: str, **kwargs) -> tuple[int, dict, str]:
    async with aiohttp.ClientSession() as s:
        async with s.get(url, **kwargs) as r:
            return r.status, dict(r.headers), await r.text()


async def test_formats_and_leaves_are_strings(double):
    status, headers, body = await get(double.url + "self", headers=JSON)
    assert status == 200 and headers["X-Metad-Version"] == "1"
    tree = json.loads(body)
    assert tree["host"] == {"instance_id": "i-1", "ip": "127.0.0.1", "sid": "1"}
    assert tree["env"] == {"model.name": "m", "enable_access_log": "true", "ports": {"0": "8080", "1": "8081"}}

    _, _, text = await get(double.url + "self/env")
    assert text == "enable_access_log\ttrue\nmodel.name\tm\nports/0\t8080\nports/1\t8081"
    _, _, leaf = await get(double.url + "self/env/model.name")
    assert leaf == "m"
    _, _, pretty = await get(double.url + "self/host?pretty=true", headers=JSON)
    assert "\n  " in pretty


async def test_missing_path_is_the_platform_404(double):
    double.put("env/empty", {})
    for path in ("self/nope", "self/env/empty"):
        status, headers, body = await get(double.url + path, headers=JSON)
        assert status == 404 and "X-Metad-Version" in headers
        assert body == '{"code":404,"message":"Not found","type":"ERROR"}'


async def test_wait_is_debounced_and_reports_the_version_read_before_it(double):
    async def change_twice():
        await asyncio.sleep(0.1)
        double.put("env/model.name", "a")
        await asyncio.sleep(0.05)
        double.put("env/model.name", "b")
        return time.monotonic()

    writer = asyncio.create_task(change_twice())
    status, headers, body = await get(double.url + "self?wait=true&prev_version=1", headers=JSON)
    answered = time.monotonic()
    last_write = await writer
    assert json.loads(body)["env"]["model.name"] == "b"  # one answer for the burst
    assert answered - last_write >= 0.09  # 100 ms of quiet first
    assert headers["X-Metad-Version"] == "1"  # read before the wait
    # Passing it back: the versions differ, so an immediate second answer (same tree).
    t0 = time.monotonic()
    _, headers, body2 = await get(double.url + "self?wait=true&prev_version=1", headers=JSON)
    assert time.monotonic() - t0 < 0.05 and body2 == body and headers["X-Metad-Version"] == "3"


async def test_wait_with_the_current_version_blocks(double):
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(get(double.url + "self?wait=true&prev_version=1", headers=JSON), 0.3)


async def test_per_caller_ip_mapping(ip_factory):
    a, b = ip_factory(), ip_factory()
    cluster = {"hosts": {"model_serving": {"i-a": {"ip": a}, "i-b": {"ip": b}}}}
    # By the address the request arrived on (the double listens on each node's IP)...
    async with MetadDouble(cluster, listen_ips=[a, b]) as d:
        for ip, iid in ((a, "i-a"), (b, "i-b")):
            _, _, body = await get(d.url_on(ip) + "self/host", headers=JSON)
            assert json.loads(body)["instance_id"] == iid
        # ...by the caller's own address...
        connector = aiohttp.TCPConnector(local_addr=(b, 0))
        async with aiohttp.ClientSession(connector=connector) as s:
            async with s.get(d.url + "self/host/instance_id") as r:
                assert await r.text() == "i-b"
        # ...and nothing for a caller that is no node.
        status, _, _ = await get(d.url + "self", headers=JSON)
        assert status == 404
    async with MetadDouble(cluster, ip_map={"127.0.0.1": a}) as d:
        _, _, body = await get(d.url + "self/host/ip")
        assert body == a


async def test_manage_api_writes_bump_the_version(double):
    async with aiohttp.ClientSession() as s:
        async with s.put(double.url + "v1/data/env", json={"model.name": "x"}) as r:
            assert (await r.json())["version"] == 2
        async with s.delete(double.url + "v1/data/env/enable_access_log") as r:
            assert (await r.json())["version"] == 3
    _, _, body = await get(double.url + "self/env", headers=JSON)
    assert json.loads(body) == {"model.name": "x", "ports": {"0": "8080", "1": "8081"}}
