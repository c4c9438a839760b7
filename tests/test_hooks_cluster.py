"""The lifecycle hooks on a three-node local cluster (real Envoy and built-in model
server on each node, each on its own loopback address), called as the platform calls
them, while a client keeps calling node 1: stop drains, scale-in and scale-out wait for
the right routes and refuse what would break the service, a vertical scale restarts a
model server with its new thread count, and no client request fails."""

from __future__ import annotations

import asyncio
import copy
import json

import psutil
import pytest

from agent.commands.hook import ExitCode
from agent.commands.up import cluster_trees
from agent.nodeops.scaling import Refusal
from tests.harness.addresses import allocate_loopback_ip
from tests.harness.load import Load
from tests.harness.node import Node, wait_for
from tests.harness.platform_hooks import run_hook

pytestmark = pytest.mark.slow
ROLE = "model_serving"


class Cluster:
    """Three nodes; `base` is each node's metadata with nothing being scaled."""

    def __init__(self, nodes: list[Node]):
        self.nodes = nodes
        self.base = [copy.deepcopy(n.tree) for n in nodes]

    def set_all(self, change=None) -> None:
        """Every node's metadata: its base, changed by `change(tree)`."""
        for node, base in zip(self.nodes, self.base):
            tree = copy.deepcopy(base)
            if change:
                change(tree)
            node.update(tree)

    def healthy_in(self, node: Node) -> set[str]:
        """Addresses `node`'s Envoy finds healthy in serving_rest."""
        for c in node.envoy_clusters().get("cluster_statuses", []):
            if c["name"] == "serving_rest":
                return {h["address"]["socket_address"]["address"] for h in c.get("host_statuses", [])
                        if h["health_status"].get("eds_health_status") == "HEALTHY" and len(h["health_status"]) == 1}
        return set()

    def reset(self) -> None:
        """Base metadata everywhere, every node started and healthy everywhere."""
        self.set_all()
        for node in self.nodes:
            if node.status()["lifecycle"]["stopped"]:
                assert run_hook(node.data_dir, "start", {}).code == ExitCode.OK
        ips = {n.ip for n in self.nodes}
        wait_for(lambda: all(self.healthy_in(n) == ips for n in self.nodes), 30, 0.2, "every node healthy everywhere")


def host_entry(tree: dict, instance_id: str) -> dict:
    return copy.deepcopy(tree["hosts"][ROLE][instance_id])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ips = [allocate_loopback_ip() for _ in range(3)]
    nodes = []
    try:
        for k, tree in enumerate(cluster_trees(ips), start=1):
            node = Node(tmp_path_factory.mktemp(f"node{k}"), tree)
            node.install_models()
            nodes.append(node.start())
        for node in nodes:
            node.wait_serving()
        c = Cluster(nodes)
        c.reset()
        yield c
    finally:
        for node in nodes:
            node.stop()


def agent_answers(node: Node) -> bool:
    try:
        return bool(node.status())
    except AssertionError:
        return False


def model_server_pid(node: Node) -> int:
    """The pid in the supervisor's record of the node's model server (it may have just exited)."""
    return json.loads((node.data_dir / "run" / "model_server.json").read_text())["pid"]


def model_server(node: Node) -> psutil.Process:
    """The node's model server process (from the supervisor's record)."""
    return psutil.Process(model_server_pid(node))


async def test_stop_drains_the_node_and_start_brings_it_back_with_no_failed_request(cluster):
    cluster.reset()
    n1, n2, n3 = cluster.nodes
    async with Load(n1.ip, concurrency=6) as load:
        await load.wait_requests(100)
        stop = await asyncio.to_thread(run_hook, n2.data_dir, "stop", {})
        assert stop.code == ExitCode.OK, stop.stderr
        # What the agent can observe: its own Envoy saw the node fail its checks. That the
        # other Envoys (node 1's, which the load goes through) stopped sending it requests
        # in time is shown by the load, which counts every failure.
        assert "this node's Envoy saw it fail its health check" in stop.stdout, stop.stdout
        await load.wait_requests(100)
        assert cluster.healthy_in(n1) == {n1.ip, n3.ip}

        # With node 2 down and nodes 1 and 3 leaving, node 2 would serve alone: refused.
        def leaving_1_and_3(tree):
            tree["deleting-hosts"] = {ROLE: {i: host_entry(tree, i) for i in ("i-local01", "i-local03")}}

        n2.update(_changed(cluster.base[1], leaving_1_and_3))
        check = await asyncio.to_thread(run_hook, n2.data_dir, "scale_in.pre_check")
        assert check.code == Refusal.NO_HEALTHY_REMAINING, check.stdout + check.stderr
        n2.update(cluster.base[1])

        start = await asyncio.to_thread(run_hook, n2.data_dir, "start", {})
        assert start.code == ExitCode.OK, start.stderr
        await asyncio.to_thread(wait_for, lambda: n2.ip in cluster.healthy_in(n1), 10, 0.2, "node 2 back in node 1")
        await load.wait_requests(100)
    assert load.result.failed == 0, load.result


def _changed(tree: dict, change) -> dict:
    tree = copy.deepcopy(tree)
    change(tree)
    return tree


async def test_scale_in_checks_then_waits_until_no_node_routes_to_the_leaving_one(cluster):
    cluster.reset()
    n1, n2, n3 = cluster.nodes

    def everyone_leaves(tree):
        tree["deleting-hosts"] = {ROLE: {i: host_entry(tree, i) for i in tree["hosts"][ROLE]}}

    n1.update(_changed(cluster.base[0], everyone_leaves))
    check = await asyncio.to_thread(run_hook, n1.data_dir, "scale_in.pre_check")
    assert check.code == Refusal.LAST_SERVING_NODE, check.stdout + check.stderr
    assert "would leave no serving node" in check.stdout
    cluster.reset()

    def node3_leaves(tree):
        tree["deleting-hosts"] = {ROLE: {"i-local03": host_entry(tree, "i-local03")}}

    async with Load(n1.ip, concurrency=6) as load:
        await load.wait_requests(100)
        cluster.set_all(node3_leaves)  # the platform registers the leaving node first
        for node in (n1, n2):
            check = await asyncio.to_thread(run_hook, node.data_dir, "scale_in.pre_check")
            assert check.code == ExitCode.OK, check.stdout + check.stderr
            scale_in = await asyncio.to_thread(run_hook, node.data_dir, "scale_in", {})
            assert scale_in.code == ExitCode.OK, scale_in.stdout + scale_in.stderr
            assert n3.ip not in node.upstream_hosts() and n3.ip not in node.upstream_hosts("serving_grpc")
        # Then the leaving node runs stop.
        stop = await asyncio.to_thread(run_hook, n3.data_dir, "stop", {})
        assert stop.code == ExitCode.OK, stop.stderr
        await load.wait_requests(100)
    assert load.result.failed == 0, load.result


async def test_scale_out_waits_for_the_added_node_and_refuses_one_that_never_serves(cluster, tmp_path):
    cluster.reset()
    n1 = cluster.nodes[0]
    ip4 = allocate_loopback_ip()
    template = host_entry(cluster.base[0], "i-local01")
    new = dict(template, ip=ip4, instance_id="i-local04", node_id="cln-local04", sid="4")

    def added(tree, entry=new):
        tree["hosts"][ROLE][entry["instance_id"]] = dict(entry)
        tree["adding-hosts"] = {ROLE: {entry["instance_id"]: dict(entry)}}

    tree4 = _changed(cluster.base[0], added)
    tree4["host"] = dict(new, hostname="i-local04")
    (tmp_path / "node4").mkdir()
    node4 = Node(tmp_path / "node4", tree4)
    node4.install_models()
    try:
        node4.start()
        wait_for(lambda: agent_answers(node4), 20, 0.2, "node 4's agent")
        start = run_hook(node4.data_dir, "start", {})  # the platform starts new nodes first
        assert start.code == ExitCode.OK, start.stderr
        async with Load(n1.ip, concurrency=6) as load:
            await load.wait_requests(50)
            cluster.set_all(added)  # existing nodes learn about the new one
            out = await asyncio.to_thread(run_hook, n1.data_dir, "scale_out", {})
            assert out.code == ExitCode.OK, out.stdout + out.stderr
            assert ip4 in cluster.healthy_in(n1)
            await load.wait_requests(100)
        assert load.result.failed == 0, load.result

        ghost = dict(new, ip=allocate_loopback_ip(), instance_id="i-local05", node_id="cln-local05", sid="5")
        n1.update(_changed(cluster.base[0], lambda t: added(t, ghost)))
        out = await asyncio.to_thread(run_hook, n1.data_dir, "scale_out", {"timeout": 6})
        assert out.code == Refusal.ADDED_NODE_NOT_SERVING, out.stdout + out.stderr
        assert "i-local05" in out.stdout
    finally:
        node4.stop()


async def test_scale_hooks_refuse_while_metadata_is_not_applied(cluster):
    cluster.reset()
    n1 = cluster.nodes[0]
    n1.update(_changed(cluster.base[0], lambda t: t["env"].update({"grpc.port": "8001"})))
    wait_for(lambda: n1.status()["last_rejection"], 5, what="rejection")
    check = await asyncio.to_thread(run_hook, n1.data_dir, "scale_in.pre_check", {"timeout": 4})
    assert check.code == Refusal.METADATA_NOT_APPLIED
    assert "port 8001 is reserved" in check.stdout
    n1.update(cluster.base[0])


async def test_vertical_scale_restarts_the_model_server_with_its_new_threads_and_no_failed_request(cluster):
    cluster.reset()
    n1, n2 = cluster.nodes[:2]
    before = model_server(n2)
    assert "--intra_op_threads=2" in before.cmdline()

    def n2_has_one_cpu(tree):
        tree["hosts"][ROLE]["i-local02"]["cpu"] = "1"
        if tree["host"]["instance_id"] == "i-local02":
            tree["host"]["cpu"] = "1"

    async with Load(n1.ip, concurrency=6) as load:
        await load.wait_requests(100)
        cluster.set_all(n2_has_one_cpu)
        await asyncio.to_thread(wait_for, lambda: model_server_pid(n2) != before.pid, 60, 0.2,
                                "node 2's model server restarted")
        assert "--intra_op_threads=1" in model_server(n2).cmdline()
        await asyncio.to_thread(wait_for, lambda: cluster.healthy_in(n1) == {n.ip for n in cluster.nodes}, 20, 0.2,
                                "node 2 healthy again")
        await load.wait_requests(100)
    assert load.result.failed == 0, load.result
    cluster.base = [_changed(t, n2_has_one_cpu) for t in cluster.base]


async def test_scale_answers_are_for_the_metadata_written_just_before_50_times_in_a_row(cluster):
    """The platform calls a scale hook right after it writes the metadata: the answer
    must be for that write, every time (the agent reads its source afresh first). The
    control API is called in-process, right after each write, with no sleep between:
    a hook's own start-up time would hide the race."""
    from agent.clients.control import request

    cluster.reset()
    n1 = cluster.nodes[0]
    socket = n1.data_dir / "run" / "agent.sock"
    template = host_entry(cluster.base[0], "i-local01")

    def everyone_leaves(tree):
        tree["deleting-hosts"] = {ROLE: {i: host_entry(tree, i) for i in tree["hosts"][ROLE]}}

    async def call(method: str, route: str, **kwargs) -> dict:
        status, body = await request(socket, method, route, timeout=60, **kwargs)
        assert status == 200, body
        return body

    for i in range(50):
        n1.update(_changed(cluster.base[0], everyone_leaves))
        verdict = await call("GET", "/scale/in/check?timeout=20")
        assert verdict["code"] == Refusal.LAST_SERVING_NODE, (i, verdict)

        ghost = dict(template, ip=allocate_loopback_ip(), instance_id=f"i-ghost{i:02d}", sid=str(10 + i))

        def ghost_added(tree, ghost=ghost):
            tree["hosts"][ROLE][ghost["instance_id"]] = dict(ghost)
            tree["adding-hosts"] = {ROLE: {ghost["instance_id"]: dict(ghost)}}

        n1.update(_changed(cluster.base[0], ghost_added))
        verdict = await call("POST", "/scale/out", json={"timeout": 0.5})
        assert verdict["code"] == Refusal.ADDED_NODE_NOT_SERVING and ghost["instance_id"] in verdict["message"], \
            (i, verdict)

        def ghost_leaves(tree, ghost=ghost):
            tree["hosts"][ROLE][ghost["instance_id"]] = dict(ghost)
            tree["deleting-hosts"] = {ROLE: {ghost["instance_id"]: dict(ghost)}}

        n1.update(_changed(cluster.base[0], ghost_leaves))
        verdict = await call("POST", "/scale/in", json={"timeout": 20})
        assert verdict["code"] == 0 and ghost["ip"] in verdict["message"], (i, verdict)

        n1.update(cluster.base[0])
        verdict = await call("GET", "/scale/in/check?timeout=20")
        assert verdict["code"] == 0 and verdict["message"] == "no serving node is being removed", (i, verdict)
