"""The node agent on metad (the TEST DOUBLE) end to end: lifecycle commands arrive,
traffic keeps flowing while metad is gone, the agent waits quietly and catches up
fast, and a restart while metad is down serves the last good tree."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path


from tests.harness.foundation_trees import add_serving_node, single_node_tree
from tests.harness.metad_double import MetadDouble
from tests.harness.node import Node, predict, until


def cmd_log(data_dir: Path) -> list[str]:
    path = data_dir / "logs" / "cmd.log"
    return path.read_text().splitlines() if path.exists() else []


async def test_outage_catch_up_and_restart_from_the_last_good_tree(node_ip, ip_factory, data_dir):
    cluster = single_node_tree(node_ip)
    del cluster["host"]  # metad derives /self/host from who asks (here: the address asked)
    metad = MetadDouble(cluster, host=node_ip)
    await metad.start()
    agent = Node(data_dir, source=metad.url, ip=node_ip)
    agent.install_models()
    agent.start()
    try:
        await until(agent.serving, 90, "the node to serve through Envoy")

        # A lifecycle command through /self/cmd runs once, logged as the platform does.
        cmd_1 = {"id": "cmd-1", "cmd": "echo lifecycle-ran", "timeout": "30"}
        metad.put("cmd", cmd_1)
        await until(lambda: any("cmd-1 [successful]: echo lifecycle-ran" in line for line in cmd_log(data_dir)),
                    10, "cmd-1 to finish")
        assert "lifecycle-ran" in (data_dir / "logs" / "app.log").read_text()

        # metad goes away: traffic flows, the agent waits without spinning.
        outage_began = time.time()
        await metad.stop()
        await until(lambda: agent.status()["source_stale_since"], 30, "the agent to notice the outage")
        cpu_before = agent.cpu_seconds()
        for _ in range(15):
            assert (await asyncio.to_thread(predict, node_ip))[0] == 200
            await asyncio.sleep(0.2)
        assert agent.cpu_seconds() - cpu_before < 0.2  # about 3 s of outage: near zero CPU
        stale_since = agent.status()["source_stale_since"]
        assert stale_since and outage_began <= stale_since <= time.time()  # since the outage, not before

        # It comes back (counter reset) with a change made meanwhile: applied at once
        # (bench/propagation.py measures how fast; the bound here only catches a hang).
        peer = ip_factory()
        changed = add_serving_node(cluster, "i-peer", peer, 2)
        changed["cmd"] = cmd_1  # the platform leaves the finished command in place
        metad = MetadDouble(changed, host=node_ip, port=metad.port)
        await metad.start()
        await until(lambda: peer in agent.upstream_hosts(), 30, "the change made during the outage")
        await until(lambda: agent.status()["source_stale_since"] is None, 30, "the source to be live again")

        # The agent restarts while metad is down: it serves from the last good tree.
        await metad.stop()
        agent.stop()
        agent = Node(data_dir, source=metad.url, ip=node_ip).start()
        await until(agent.serving, 90, "the restarted node to serve")
        assert peer in agent.upstream_hosts()
        status = agent.status()
        assert status["source_stale_since"] is not None
        # metad returns with the very tree the node already runs: no longer stale.
        metad = MetadDouble(changed, host=node_ip, port=metad.port)
        await metad.start()
        await until(lambda: agent.status()["source_stale_since"] is None, 30, "the source to be live again")
        # The command finished before the restart (in the last good tree and in metad
        # again) is not run again: commands run in order, so once the next one has
        # finished, cmd-1 would have run before it.
        metad.put("cmd", {"id": "cmd-2", "cmd": "echo next-ran", "timeout": "30"})
        await until(lambda: any("cmd-2 [successful]" in line for line in cmd_log(data_dir)), 30, "cmd-2 to finish")
        assert sum("cmd-1 [executing]" in line for line in cmd_log(data_dir)) == 1, cmd_log(data_dir)
    finally:
        agent.stop()
        await metad.stop()


async def test_two_nodes_each_get_their_own_self(ip_factory, tmp_path):
    """Per-caller mapping: each node's agent asks the metad double as itself."""
    a, b = ip_factory(), ip_factory()
    cluster = add_serving_node(single_node_tree(a), "i-b", b, 2)
    del cluster["host"]
    metad = MetadDouble(cluster, listen_ips=[a, b])
    await metad.start()
    agents = []
    try:
        for ip in (a, b):
            d = tmp_path / ip
            d.mkdir()
            agents.append(Node(d, source=metad.url_on(ip), ip=ip).start())
        for agent in agents:
            await until(lambda agent=agent: agent.upstream_hosts() == {a, b}, 60, f"{agent.ip}'s Envoy")
            assert agent.status()["node"]["ip"] == agent.ip
    finally:
        for agent in agents:
            agent.stop()
        await metad.stop()
