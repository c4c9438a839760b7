"""The cluster: three nodes on their own loopback addresses, real Envoy and the built-in
server on each. Clients call one node; scaling, model switches, restarts and config
changes happen under load with no failed request."""

from __future__ import annotations

import asyncio
import collections
import copy
import os
import re
import shutil
import signal
import time

import pytest

from agent.commands.up import cluster_trees
from tests.harness.load import GrpcLoad, Load, grpc_request, prediction_stub
from tests.harness.node import Node, http, predict, wait_for

pytestmark = pytest.mark.slow


class Cluster:
    def __init__(self, nodes: list[Node]):
        self.nodes = nodes

    @property
    def entry(self) -> Node:
        return self.nodes[0]

    def update_all(self, change) -> None:
        """Apply `change(tree)` to every node's metadata."""
        for n in self.nodes:
            tree = copy.deepcopy(n.tree)
            change(tree)
            n.update(tree)

    async def scale_out(self, trees: list[dict], data_dir, prepare=lambda models_dir: None) -> Node:
        """Add a node as the platform's scale-out does: every node gets its tree of `trees`
        (the new node's last) with the new node in /hosts and /adding-hosts, and the new
        node starts; returns once it is healthy on the entry. `prepare(models_dir)` adds
        models beside the built-in ones. The caller clears /adding-hosts."""
        tree = trees[-1]
        adding = {"model_serving": {tree["host"]["instance_id"]: tree["host"]}}
        for n, current in zip(self.nodes, trees):
            n.update(dict(current, **{"adding-hosts": adding}))
        data_dir.mkdir()
        node = Node(data_dir, dict(tree, **{"adding-hosts": adding}))
        node.install_models()
        prepare(data_dir / "models")
        self.nodes.append(node.start())
        everyone = {n.ip for n in self.nodes}
        await asyncio.to_thread(wait_for, lambda: self.healthy_upstreams() == everyone, 60, 0.2,
                                f"{node.ip} healthy on the entry")
        return node

    def traffic_reaches_all(self) -> bool:
        """True when a burst of REST and one of gRPC requests through the entry each reached
        every node (Envoy's workers pick up health changes a moment after its admin
        reports them; the two clusters are health-checked independently)."""
        before = {c: upstream_requests(self.entry, c) for c in ("serving_rest", "serving_grpc")}
        for _ in range(3 * len(self.nodes)):
            predict(self.entry.ip)
        request, _ = grpc_request("half_plus_two")
        with prediction_stub(self.entry.ip) as stub:
            for _ in range(3 * len(self.nodes)):
                stub.Predict(request, timeout=10)
        return all(set(upstream_requests(self.entry, c) - before[c]) == {n.ip for n in self.nodes}
                   for c in before)

    def healthy_upstreams(self, node: Node | None = None, cluster: str = "serving_rest") -> set[str]:
        node = node or self.entry
        out = set()
        for c in node.envoy_clusters().get("cluster_statuses", []):
            if c["name"] == cluster:
                for h in c.get("host_statuses", []):
                    if h["health_status"].get("eds_health_status") == "HEALTHY" and len(h["health_status"]) == 1:
                        out.add(h["address"]["socket_address"]["address"])
        return out


def start_nodes(ips, tmp_path, **env) -> list[Node]:
    nodes = []
    for k, tree in enumerate(cluster_trees(ips, **env), start=1):
        d = tmp_path / f"node{k}"
        d.mkdir()
        n = Node(d, tree)
        n.install_models()
        nodes.append(n.start())
    for n in nodes:
        n.wait_serving()
    return nodes


@pytest.fixture
def cluster(ip_factory, tmp_path):
    nodes = start_nodes([ip_factory() for _ in range(3)], tmp_path, **{"enable.access.log": "true"})
    c = Cluster(nodes)
    for name in ("serving_rest", "serving_grpc"):
        wait_for(lambda: c.healthy_upstreams(cluster=name) == {n.ip for n in nodes}, 15, 0.2,
                 f"all nodes healthy in the entry's {name}")
    wait_for(lambda: c.traffic_reaches_all(), 15, 0.2, "traffic through the entry reaching every node")
    yield c
    for n in c.nodes:
        n.stop()


def upstream_counts(node: Node, cluster: str) -> collections.Counter:
    """Requests per upstream address in the node's access log (flushed every second)."""
    text = (node.data_dir / "logs" / "envoy.log").read_text()
    return collections.Counter(re.findall(rf"upstream=([\d.]+):\d+ cluster={cluster}", text))


def upstream_requests(node: Node, cluster: str) -> collections.Counter:
    """Requests Envoy sent to each host of `cluster` so far (admin counters: exact at once)."""
    counts = collections.Counter()
    for c in node.envoy_clusters().get("cluster_statuses", []):
        if c["name"] == cluster:
            for h in c.get("host_statuses", []):
                total = next((int(s.get("value", 0)) for s in h.get("stats", []) if s["name"] == "rq_total"), 0)
                counts[h["address"]["socket_address"]["address"]] = total
    return counts


def assert_even(counts: collections.Counter, ips: list[str], total: int) -> None:
    assert set(counts) == set(ips), counts
    for ip in ips:
        assert abs(counts[ip] - total / len(ips)) <= 0.1 * total / len(ips), counts


def test_rest_and_grpc_requests_spread_evenly_across_all_nodes(cluster):
    import numpy as np

    from agent.serving.protos import predict_pb2
    from agent.serving.tensors import from_ndarray

    ips = [n.ip for n in cluster.nodes]
    rest_before = upstream_requests(cluster.entry, "serving_rest")
    grpc_before = upstream_requests(cluster.entry, "serving_grpc")
    for _ in range(300):
        assert predict(cluster.entry.ip)[0] == 200
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(from_ndarray(np.array([1.0], dtype=np.float32)))
    with prediction_stub(cluster.entry.ip) as stub:  # one HTTP/2 connection
        for _ in range(300):
            assert list(stub.Predict(request, timeout=10).outputs["y"].float_val) == [2.5]
    assert_even(upstream_requests(cluster.entry, "serving_rest") - rest_before, ips, 300)
    assert_even(upstream_requests(cluster.entry, "serving_grpc") - grpc_before, ips, 300)


async def test_scale_out_and_in_under_load_fails_no_request(cluster, ip_factory, tmp_path):
    new_ip = ip_factory()
    ips = [n.ip for n in cluster.nodes] + [new_ip]
    trees = cluster_trees(ips, **{"enable.access.log": "true"})
    new_id = trees[3]["host"]["instance_id"]
    async with Load(cluster.entry.ip) as load:
        await load.wait_requests(50)
        # Scale out: the new node appears in /hosts and /adding-hosts everywhere.
        await cluster.scale_out(trees, tmp_path / "node4")
        await load.wait_requests(200)
        for n, tree in zip(cluster.nodes, trees):
            n.update(tree)  # scale-out done: /adding-hosts cleared
        await load.wait_requests(50)

        # Scale in: node4 listed in /deleting-hosts (still in /hosts), drained everywhere, then stopped.
        deleting = {"model_serving": {new_id: trees[3]["host"]}}
        for n, tree in zip(cluster.nodes, trees):
            n.update(dict(tree, **{"deleting-hosts": deleting}))
        await asyncio.to_thread(wait_for, lambda: all(new_ip not in n.upstream_hosts() for n in cluster.nodes),
                                5, 0.1, "node4 drained")
        await load.wait_requests(50)
        cluster.nodes.pop().stop()
        for n, tree in zip(cluster.nodes, cluster_trees(ips[:3], **{"enable.access.log": "true"})):
            n.update(tree)
        await load.wait_requests(100)
    assert load.result.failed == 0, load.result
    # node 4 has left Envoy's hosts; the access log still says it served.
    wait_for(lambda: upstream_counts(cluster.entry, "serving_rest")[new_ip] > 0, 10, 0.2, "node 4 in the access log")


async def test_model_switch_under_load_fails_no_request(cluster):
    # A second model, uploaded under its own name (a copy of half_plus_two).
    for n in cluster.nodes:
        shutil.copytree(n.data_dir / "models" / "half_plus_two", n.data_dir / "models" / "half_plus_three")
    async with Load(cluster.entry.ip, concurrency=3) as old_clients:
        await old_clients.wait_requests(50)
        cluster.update_all(lambda t: t["env"].update({"model.name": "half_plus_three"}))
        # Clients move to the new name once the cluster says it is available.
        await asyncio.to_thread(wait_for, lambda: b"AVAILABLE" in http(
            "GET", f"http://{cluster.entry.ip}:8080/v1/models/half_plus_three")[1], 60, 0.2, "new model available")
        async with Load(cluster.entry.ip, model="half_plus_three", concurrency=3) as new_clients:
            await new_clients.wait_requests(100)
            old_clients._stop.set()
            await asyncio.to_thread(wait_for, lambda: all(
                http("GET", f"http://{n.ip}:8501/v1/models/half_plus_two")[0] == 404 for n in cluster.nodes),
                60, 0.2, "old model unloaded everywhere")
            await new_clients.wait_requests(100)
    assert old_clients.result.failed == 0, old_clients.result
    assert new_clients.result.failed == 0, new_clients.result


def test_a_model_only_some_nodes_know_yet_is_served_through_every_node(cluster):
    """During a switch some nodes have not read the new metadata: they answer NOT_FOUND for
    the new model. Envoy retries that on another node, for gRPC as for REST, so no client
    sees it; a model no node knows is still NOT_FOUND (404)."""
    import grpc

    for n in cluster.nodes:
        shutil.copytree(n.data_dir / "models" / "half_plus_two", n.data_dir / "models" / "half_plus_three")
    for n in cluster.nodes[1:]:  # the entry node never hears of half_plus_three
        tree = copy.deepcopy(n.tree)
        tree["env"]["model.name"] = "half_plus_two,half_plus_three"
        n.update(tree)
    wait_for(lambda: all(b"AVAILABLE" in http("GET", f"http://{n.ip}:8501/v1/models/half_plus_three")[1]
                         for n in cluster.nodes[1:]), 60, 0.1, "half_plus_three AVAILABLE on nodes 2 and 3")
    assert http("GET", f"http://{cluster.entry.ip}:8501/v1/models/half_plus_three")[0] == 404
    sent_to_entry = upstream_requests(cluster.entry, "serving_grpc")[cluster.entry.ip]
    with prediction_stub(cluster.entry.ip) as stub:
        request, check = grpc_request("half_plus_three")
        for _ in range(30):
            assert check(stub.Predict(request, timeout=30))
        request.model_spec.name = "half_plus_four"
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND, refused.value
    # Round robin sent some of them to the entry's own server first: the retries were real.
    assert upstream_requests(cluster.entry, "serving_grpc")[cluster.entry.ip] > sent_to_entry
    for _ in range(30):
        status, body = predict(cluster.entry.ip, model="half_plus_three")
        assert status == 200, body
    assert http("POST", f"http://{cluster.entry.ip}:8080/v1/models/half_plus_four:predict",
                b'{"instances": [1.0]}')[0] == 404


async def test_switch_to_resnet_and_back_fails_no_rest_or_grpc_request(cluster):
    """8 REST and 8 gRPC clients on the entry node through half_plus_two -> resnet ->
    half_plus_two. Clients name the new model as soon as the cluster reports it
    AVAILABLE (as a user would) and every answer counts, on both names."""
    entry = cluster.entry
    async with Load(entry.ip, concurrency=8) as rest, GrpcLoad(entry.ip, concurrency=8) as grpc_load:
        await rest.wait_requests(50)
        await grpc_load.wait_requests(50)
        for old, new in (("half_plus_two", "resnet"), ("resnet", "half_plus_two")):
            written = time.monotonic()
            cluster.update_all(lambda t: t["env"].update({"model.name": new}))
            await asyncio.to_thread(wait_for, lambda: b"AVAILABLE" in http(
                "GET", f"http://{entry.ip}:8080/v1/models/{new}")[1], 60, 0.05, f"{new} available")
            print(f"{old} -> {new}: reported AVAILABLE {time.monotonic() - written:.2f}s after the write")
            rest.model = grpc_load.model = new
            await rest.wait_requests(30, timeout=120)
            await grpc_load.wait_requests(30, timeout=120)
            await asyncio.to_thread(wait_for, lambda: all(
                http("GET", f"http://{n.ip}:8501/v1/models/{old}")[0] == 404 for n in cluster.nodes),
                60, 0.2, f"{old} unloaded everywhere")
            print(f"{old} -> {new}: unloaded everywhere {time.monotonic() - written:.2f}s after the write")
            await rest.wait_requests(30, timeout=120)
            await grpc_load.wait_requests(30, timeout=120)
    print(f"REST: {rest.result}; gRPC: {grpc_load.result}")
    assert rest.result.failed == 0, rest.result
    assert grpc_load.result.failed == 0, grpc_load.result
    # Every agent told its model server over the local admin socket, not on its poll.
    for n in cluster.nodes:
        await asyncio.to_thread(wait_for, lambda: '"model_server.reloaded"' in n.stderr(), 10, 0.1,
                                f"{n.ip}'s agent reloading its model server")
    # The same call from the network is refused, and changes nothing.
    import grpc

    from agent.serving.protos import model_management_pb2, model_service_pb2_grpc

    request = model_management_pb2.ReloadConfigRequest()
    request.config.model_config_list.config.add(name="x", base_path=str(entry.data_dir / "models" / "resnet"))
    with grpc.insecure_channel(f"{entry.ip}:8500") as channel:
        with pytest.raises(grpc.RpcError) as err:
            model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert predict(entry.ip)[0] == 200


async def test_agent_restart_access_log_toggle_and_port_change_fail_no_request(cluster):
    entry = cluster.entry
    async with Load(entry.ip) as load:
        await load.wait_requests(50)
        # An agent restart (kill -9 and start again) on the entry node.
        entry.proc.send_signal(signal.SIGKILL)
        entry.proc.wait()
        await load.wait_requests(50)
        entry.start()
        await asyncio.to_thread(wait_for, lambda: entry.status()["up_to_date"], 30, 0.2, "agent back")
        await load.wait_requests(50)
        # Access log off and on.
        for value in ("false", "true"):
            cluster.update_all(lambda t: t["env"].update({"enable.access.log": value}))
            await asyncio.to_thread(wait_for, lambda: entry.status()["params"]["enable.access.log"] == (value == "true"),
                                    10, 0.1, "access log toggle")
            await load.wait_requests(50)
        # http.port change: clients move to the new port; the old one drains.
        cluster.update_all(lambda t: t["env"].update({"http.port": "8082"}))
        await asyncio.to_thread(wait_for, lambda: predict(entry.ip, 8082)[0] == 200, 10, 0.1, "new port")
        load.port = 8082
        await load.wait_requests(100)
    assert load.result.failed == 0, load.result


async def test_killed_model_server_is_routed_around_and_rejoins(cluster):
    victim = cluster.nodes[2]
    ips = {n.ip for n in cluster.nodes}
    async with Load(cluster.entry.ip, concurrency=4) as load:
        await load.wait_requests(100)
        pid = victim.status()["processes"]["model_server"]["pid"]
        os.kill(pid, signal.SIGKILL)
        await asyncio.to_thread(wait_for, lambda: victim.ip not in cluster.healthy_upstreams(), 30, 0.05, "victim ejected")
        await load.wait_requests(200)
        await asyncio.to_thread(wait_for, lambda: cluster.healthy_upstreams() == ips, 60, 0.2, "victim rejoined")
        await load.wait_requests(100)
    assert load.result.failed <= 0.001 * (load.result.ok + load.result.failed), load.result
