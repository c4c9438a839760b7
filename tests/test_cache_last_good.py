"""The last good tree: persisted privately and atomically, served when the metadata
service is unreachable at boot, then replaced by live snapshots."""

from __future__ import annotations

import asyncio
import os
import stat
import time

from agent.metadata import Snapshot
from agent.metadata.cache import LastGoodTree, with_fallback
from agent.metadata.metad import MetadSource
from tests.harness.metad_double import MetadDouble

TREE = {"host": {"ip": "10.0.0.5", "instance_id": "i-1"}, "env": {"s3.secret_key": "hunter2", "model.name": "m"}}


def test_save_is_private_atomic_and_loads_as_stale(tmp_path):
    cache = LastGoodTree(tmp_path / "state" / "last-good.json")
    assert cache.load() is None
    cache.save(Snapshot(TREE, "42", "metad:http://x/self"))
    assert stat.S_IMODE(os.stat(cache.path).st_mode) == 0o600
    cache.save(Snapshot(dict(TREE, env={"model.name": "n"}), "43", "metad:http://x/self"))
    assert os.listdir(cache.path.parent) == ["last-good.json"]  # no staging file left behind
    loaded = cache.load()
    assert loaded.stale and loaded.tree["env"] == {"model.name": "n"}
    assert (loaded.version, loaded.source) == ("43", "metad:http://x/self")


def test_unreadable_cache_is_ignored(tmp_path):
    cache = LastGoodTree(tmp_path / "last-good.json")
    cache.path.write_text("{not json")
    assert cache.load() is None
    cache.save(Snapshot(None, "", "x", error="broken"))  # nothing to keep
    assert cache.load() is None


async def test_boot_while_metad_is_down_serves_the_cache_then_goes_live(tmp_path, node_ip):
    cache = LastGoodTree(tmp_path / "last-good.json")
    cache.save(Snapshot(TREE, "7", "metad"))
    double = MetadDouble(dict(TREE, env={"model.name": "live"}))
    await double.start()
    port = double.port
    await double.stop()  # the service is down when the agent boots

    source = MetadSource(f"http://127.0.0.1:{port}/")
    stream = with_fallback(source, cache, boot_timeout=0.5)
    t0 = time.monotonic()
    first = await asyncio.wait_for(stream.__anext__(), 2)
    assert first.stale and first.tree == TREE
    assert 0.5 <= time.monotonic() - t0 < 1.0
    assert source.stale_since is not None  # status can say "stale since ..."

    revived = MetadDouble(dict(TREE, env={"model.name": "live"}), port=port)
    await revived.start()
    try:
        live = await asyncio.wait_for(stream.__anext__(), 2)
        assert not live.stale and live.tree["env"] == {"model.name": "live"}
        assert source.stale_since is None
    finally:
        await stream.aclose()
        await revived.stop()


async def test_a_reachable_source_never_serves_the_cache(tmp_path):
    cache = LastGoodTree(tmp_path / "last-good.json")
    cache.save(Snapshot(TREE, "7", "metad"))
    async with MetadDouble(dict(TREE, env={"model.name": "live"})) as double:
        stream = with_fallback(MetadSource(double.url), cache, boot_timeout=0.5)
        first = await asyncio.wait_for(stream.__anext__(), 2)
        assert not first.stale and first.tree["env"] == {"model.name": "live"}
        double.put("env/model.name", "next")
        second = await asyncio.wait_for(stream.__anext__(), 2)
        assert not second.stale and second.tree["env"] == {"model.name": "next"}
        await stream.aclose()
