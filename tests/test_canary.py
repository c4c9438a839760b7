"""The canary split through a real node's Envoy: half_plus_two with two versions that
answer differently (1: y = 0.5x + 2, 2: y = 0.5x + 3), labels stable=1 and canary=2, and
model.canary.percent 20. Unversioned requests split 20 % / 80 % over REST and gRPC (TF
Serving's API and the Open Inference Protocol), counted from the answers, the version
headers and Envoy's access log; requests naming a version or label never split; a change
to 50 % applies live under load with no failed request.

tritonclient's inference.* messages are loaded in this process: the project's own
grpc_service_pb2 (same names) must not be imported here."""

from __future__ import annotations

import asyncio
import collections
import copy
import json
import os
import re

import aiohttp
import grpc
import numpy as np
import pytest

from agent.serving.canary import CanarySplit, TrafficError, parse_traffic
from agent.serving.protos import predict_pb2, prediction_service_pb2_grpc
from agent.serving.tensors import from_ndarray
from tests.harness.addresses import allocate_loopback_ip
from tests.harness.foundation_trees import single_node_tree
from tests.harness.node import Node, http, until, wait_for
from tests.harness.serving_support import copy_builtin

MODEL = "half_plus_two"
# The answer to x = 1.0 of each version.
ANSWER = {2.5: 1, 3.5: 2}
TOLERANCE = 0.03


# --- the split itself ---------------------------------------------------------------

def test_the_split_is_exact_and_even_over_every_hundred_requests():
    split = CanarySplit()
    split.set({"m": 20})
    picks = [split.take("m") for _ in range(1000)]
    assert sum(picks) == 200
    # Spread out, not in a burst: every window of 5 requests has exactly one canary.
    assert all(sum(picks[i:i + 5]) == 1 for i in range(0, 1000, 5))
    split.set({"m": 50})
    assert sum(split.take("m") for _ in range(100)) == 50
    assert not split.take("other") and not split.applies("other")
    split.set({"m": 0})
    assert not any(split.take("m") for _ in range(100)) and split.applies("m")


@pytest.mark.parametrize("text, says", [
    ("not json", "not JSON"),
    ("[]", "canary_percent must map model names to percentages"),
    ('{"canary_percent": [20]}', "canary_percent must map model names to percentages"),
    ('{"canary_percent": {"m": 101}}', "must be an integer from 0 to 100"),
    ('{"canary_percent": {"m": -1}}', "must be an integer from 0 to 100"),
    ('{"canary_percent": {"m": true}}', "must be an integer from 0 to 100"),
    ('{"canary_percent": {"m": "20"}}', "must be an integer from 0 to 100"),
    (" " * (1 << 20) + "{}", "larger than"),
])
def test_a_bad_traffic_file_is_refused_saying_why(text, says):
    with pytest.raises(TrafficError, match=re.escape(says)):
        parse_traffic(text, "traffic.json")


# --- through a node -----------------------------------------------------------------

def _two_versions(models_root) -> None:
    """half_plus_two version 1 as built in, and version 2 with 3 in place of 2."""
    import onnx
    from onnx import numpy_helper

    model_dir = copy_builtin(models_root, MODEL, version=1)
    model = onnx.load(str(model_dir / "1" / "model.onnx"))
    for i, init in enumerate(model.graph.initializer):
        if init.name == "two":
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.array(3.0, dtype=np.float32), "two"))
    staging = model_dir / ".staging-2"
    staging.mkdir()
    onnx.save(model, str(staging / "model.onnx"))
    os.rename(staging, model_dir / "2")


ENV = {
    "model.name": MODEL,
    "model.version.policy": "specific 1,2",
    "model.version.labels": "stable=1,canary=2",
    "model.canary.percent": "20",
    "enable.access.log": "true",
}


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("canary") / "data"
    data_dir.mkdir()
    _two_versions(data_dir / "models")
    ip = allocate_loopback_ip()
    n = Node(data_dir, single_node_tree(ip, **ENV))
    n.start()
    try:
        def both_available():
            status, body = http("GET", f"http://{ip}:8080/v1/models/{MODEL}")
            states = {v["version"]: v["state"] for v in json.loads(body)["model_version_status"]} if status == 200 else {}
            return n._alive() and states == {"1": "AVAILABLE", "2": "AVAILABLE"}
        wait_for(both_available, 90, 0.2, "both versions AVAILABLE through Envoy")
    except BaseException:
        n.stop()
        raise
    yield n
    n.stop()


class Clients:
    """Unversioned (or versioned) predict calls through Envoy, counted by the version
    that answered; every failure is kept by kind."""

    def __init__(self, ip: str):
        self.ip = ip
        self.versions: collections.Counter = collections.Counter()
        self.failures: collections.Counter = collections.Counter()

    async def rest(self, session: aiohttp.ClientSession, path: str = "") -> int | None:
        url = f"http://{self.ip}:8080/v1/models/{MODEL}{path}:predict"
        try:
            async with session.post(url, json={"instances": [1.0]}) as resp:
                body = await resp.read()
                if resp.status != 200:
                    self.failures[f"http {resp.status}: {body[:80]!r}"] += 1
                    return None
                version = ANSWER.get(json.loads(body)["predictions"][0])
                if version is None or resp.headers.get("x-model-version") != str(version):
                    self.failures[f"answer {body[:60]!r} from version {resp.headers.get('x-model-version')}"] += 1
                    return None
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            self.failures[type(e).__name__] += 1
            return None
        self.versions[version] += 1
        return version

    async def grpc(self, stub, version: int | None = None, label: str | None = None) -> int | None:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        if version is not None:
            request.model_spec.version.value = version
        if label is not None:
            request.model_spec.version_label = label
        request.inputs["x"].CopyFrom(from_ndarray(np.array([1.0], dtype=np.float32)))
        try:
            call = stub.Predict(request, timeout=30)
            response = await call
            served = dict(await call.initial_metadata()).get("x-model-version")
        except grpc.aio.AioRpcError as e:
            self.failures[f"grpc {e.code().name}: {e.details()[:80]}"] += 1
            return None
        answered = ANSWER.get(response.outputs["y"].float_val[0])
        if answered is None or answered != response.model_spec.version.value or served != str(answered):
            self.failures[f"gRPC answer {response.outputs['y'].float_val[0]} from version {served}"] += 1
            return None
        self.versions[answered] += 1
        return answered


async def _many(n: int, concurrency: int, call) -> None:
    queue = iter(range(n))

    async def worker():
        for _ in queue:
            await call()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def _share(counter: collections.Counter) -> float:
    return counter[2] / (counter[1] + counter[2])


def _access_log(node: Node) -> str:
    path = node.data_dir / "logs" / "envoy.log"
    return path.read_text(errors="replace") if path.exists() else ""


async def test_twenty_percent_of_2000_unversioned_rest_requests_go_to_the_canary(node):
    clients = Clients(node.ip)
    before = len(re.findall(rf'"POST /v1/models/{MODEL}:predict', _access_log(node)))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        await _many(2000, 8, lambda: clients.rest(session))
    assert not clients.failures, clients.failures
    assert sum(clients.versions.values()) == 2000
    assert abs(_share(clients.versions) - 0.20) <= TOLERANCE, clients.versions

    # Envoy's access log says which version served each of them (it flushes within seconds).
    def logged():
        lines = re.findall(rf'"POST /v1/models/{MODEL}:predict .* model={MODEL} version=(\d+)', _access_log(node))
        return lines[before:] if len(lines) - before >= 2000 else None
    wait_for(logged, 30, 0.2, "2000 predict lines in envoy.log")
    assert collections.Counter(int(v) for v in logged()) == clients.versions

    # The console's Models page: each version's labels, its share and the requests it served.
    status, body = http("GET", f"http://{node.ip}:8090/api/models")
    assert status == 200, body
    row = next(m for m in json.loads(body)["models"] if m["name"] == MODEL)
    versions = {v["version"]: v for v in row["versions"]}
    assert row["configured"] and row["policy"] == "specific 1,2" and row["server"]["canary_percent"] == 20
    assert (versions["1"]["labels"], versions["1"]["share"], versions["1"]["serving"]) == (["stable"], 80, True)
    assert (versions["2"]["labels"], versions["2"]["share"], versions["2"]["serving"]) == (["canary"], 20, False)
    assert versions["1"]["requests"] >= clients.versions[1] and versions["2"]["requests"] >= clients.versions[2]
    status, page = http("GET", f"http://{node.ip}:8090/models")
    assert status == 200 and b"canary 20 %" in page and b"20 % of unversioned" in page


async def test_unversioned_grpc_requests_split_alike_on_both_protocols(node):
    import tritonclient.grpc as tgrpc
    import tritonclient.http as thttp

    clients = Clients(node.ip)
    async with grpc.aio.insecure_channel(f"{node.ip}:8081") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        await _many(500, 8, lambda: clients.grpc(stub))
    assert not clients.failures, clients.failures
    assert abs(_share(clients.versions) - 0.20) <= TOLERANCE, clients.versions

    # The Open Inference Protocol, with Triton's own clients, over gRPC and REST.
    for client, module in ((tgrpc.InferenceServerClient(f"{node.ip}:8081"), tgrpc),
                           (thttp.InferenceServerClient(f"{node.ip}:8080"), thttp)):
        counted = collections.Counter()
        for _ in range(500):
            x = module.InferInput("x", [1], "FP32")
            x.set_data_from_numpy(np.array([1.0], dtype=np.float32))
            result = client.infer(MODEL, [x])
            version = ANSWER[float(result.as_numpy("y")[0])]
            response = result.get_response()
            named = response.model_version if module is tgrpc else response["model_version"]
            assert named == str(version)
            counted[version] += 1
        client.close()
        assert abs(_share(counted) - 0.20) <= TOLERANCE, (module.__name__, counted)


async def test_requests_naming_a_version_or_label_never_split(node):
    import tritonclient.http as thttp

    clients = Clients(node.ip)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for path, version in (("/versions/1", 1), ("/versions/2", 2), ("/labels/stable", 1), ("/labels/canary", 2)):
            got = collections.Counter()
            for _ in range(100):
                got[await clients.rest(session, path)] += 1
            assert got == {version: 100}, (path, got, clients.failures)
    async with grpc.aio.insecure_channel(f"{node.ip}:8081") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for kwargs, version in (({"version": 1}, 1), ({"label": "stable"}, 1), ({"label": "canary"}, 2)):
            got = collections.Counter()
            for _ in range(100):
                got[await clients.grpc(stub, **kwargs)] += 1
            assert got == {version: 100}, (kwargs, got, clients.failures)
    # The Open Inference Protocol's version field takes a number or a label.
    client = thttp.InferenceServerClient(f"{node.ip}:8080")
    for named, version in (("1", 1), ("2", 2), ("stable", 1), ("canary", 2)):
        got = collections.Counter()
        for _ in range(50):
            x = thttp.InferInput("x", [1], "FP32")
            x.set_data_from_numpy(np.array([1.0], dtype=np.float32))
            got[ANSWER[float(client.infer(MODEL, [x], model_version=named).as_numpy("y")[0])]] += 1
        assert got == {version: 50}, (named, got)
    client.close()


def _served_percent(node: Node) -> int:
    status, body = http("GET", f"http://{node.ip}:8501/v1/models/{MODEL}/runtime")
    return json.loads(body)["canary_percent"] if status == 200 else -1


async def test_changing_to_fifty_percent_applies_live_under_load_with_no_failed_request(node):
    clients = Clients(node.ip)
    stop = asyncio.Event()
    after: collections.Counter = collections.Counter()
    changed = asyncio.Event()

    async def rest_loop(session):
        while not stop.is_set():
            version = await clients.rest(session)
            if changed.is_set() and version is not None:
                after[version] += 1

    async def grpc_loop(stub):
        while not stop.is_set():
            await clients.grpc(stub)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session, \
            grpc.aio.insecure_channel(f"{node.ip}:8081") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        tasks = [asyncio.create_task(rest_loop(session)) for _ in range(4)]
        tasks += [asyncio.create_task(grpc_loop(stub)) for _ in range(2)]
        try:
            await until(lambda: sum(clients.versions.values()) >= 300, 60, "load under way")
            tree = copy.deepcopy(node.tree)
            tree["env"]["model.canary.percent"] = "50"
            node.update(tree)
            await until(lambda: _served_percent(node) == 50, 60, "the model server splitting 50 %")
            changed.set()
            await until(lambda: sum(after.values()) >= 1000, 120, "1000 requests at 50 %")
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    assert not clients.failures, clients.failures
    assert abs(_share(after) - 0.50) <= TOLERANCE, after
