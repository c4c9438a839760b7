"""The platform's lifecycle hooks on one node, called as the platform calls them
(hooks/<name>, service_params JSON last, the node's environment, the service's
timeout from platform/cluster.json.mustache), against a real running node."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time

import boto3
import psutil
import pytest
from botocore.config import Config

from agent.commands.hook import ExitCode
from agent.nodeops.monitor import ITEMS, RATE_WINDOW, SAMPLE_INTERVAL
from tests.harness.foundation_trees import single_node_tree, write_tree
from tests.harness.load import Load
from tests.harness.node import Node, http, predict, wait_for
from tests.harness.platform_hooks import MONITOR_LIMIT, repo_node_tree, run_hook
from tests.harness.repo_support import minio_on_path  # noqa: F401  (fixture)

ACCESS_KEY = "hook-test-access"
SECRET_KEY = "hook-test-secret-not-a-default"


@pytest.fixture
def node(node_ip, data_dir):
    n = Node(data_dir, single_node_tree(node_ip))
    n.install_models()
    n.start().wait_serving()
    yield n
    n.stop()


def process_pid(node: Node, name: str) -> int | None:
    try:
        pid = json.loads((node.data_dir / "run" / f"{name}.json").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None
    return pid if psutil.pid_exists(pid) else None


def applied_version(node: Node) -> str | None:
    """The metadata version the node's agent applied; None while no agent answers."""
    try:
        return node.status()["applied_version"]
    except AssertionError:
        return None


def envoy_stat(node: Node, name: str) -> int:
    """One counter or gauge from the node's Envoy admin."""
    _, body = http("GET", f"{node.admin}/stats?filter=^{name}$&format=json")
    return next(int(s.get("value") or 0) for s in json.loads(body)["stats"] if s["name"] == name)


def listening(ip: str, port: int) -> bool:
    return http("GET", f"http://{ip}:{port}/", timeout=1)[0] != 0


def test_init_prepares_directories_permissions_and_builtin_models(node_ip, data_dir):
    metadata = data_dir.parent / "metadata.yaml"
    write_tree(metadata, single_node_tree(node_ip))
    for _ in range(2):  # idempotent
        run = run_hook(data_dir, "init", {}, metadata=metadata)
        assert run.code == ExitCode.OK, run.stderr
    for d in ("models", "logs", "conf"):
        assert stat.S_IMODE((data_dir / d).stat().st_mode) == 0o755
    for d in ("state", "run"):
        assert stat.S_IMODE((data_dir / d).stat().st_mode) == 0o700
    for model in ("half_plus_two", "resnet"):
        assert (data_dir / "models" / model / "1").is_dir()
    assert "built-in models" in run.stdout


@pytest.mark.parametrize("s3_type, missing", [("ois", "s3.access.key"), ("minio", "s3.secret.key")])
def test_init_refuses_object_storage_without_credentials(node_ip, data_dir, s3_type, missing):
    metadata = data_dir.parent / "metadata.yaml"
    env = {"s3.type": s3_type, "s3.endpoint": "https://s3.example.com", "s3.access.key": "", "s3.secret.key": ""}
    if missing == "s3.secret.key":
        env["s3.access.key"] = ACCESS_KEY
    write_tree(metadata, single_node_tree(node_ip, **env))
    run = run_hook(data_dir, "init", metadata=metadata)
    assert run.code == ExitCode.REFUSED
    assert missing in run.stderr and "no default key is shipped" in run.stderr
    assert not (data_dir / "models").exists()


def test_model_repo_init_then_start_seeds_the_bucket_with_the_builtin_models(node_ip, data_dir, minio_on_path):
    tree = repo_node_tree(node_ip, **{"s3.type": "minio", "s3.access.key": ACCESS_KEY, "s3.secret.key": SECRET_KEY,
                                      "model.base.path": "s3://models/prod"})
    metadata = data_dir / "metadata.yaml"
    write_tree(metadata, tree)
    run = run_hook(data_dir, "init", role="model_repo", metadata=metadata)
    assert run.code == ExitCode.OK, run.stderr
    assert stat.S_IMODE((data_dir / "minio" / "data").stat().st_mode) == 0o700

    # The agent runs the node's MinIO (the test double unless a real one is on PATH) on ip:9000.
    agent = Node(data_dir, tree).start()
    try:
        wait_for(lambda: applied_version(agent), 20, what="the agent")
        run = run_hook(data_dir, "start", {}, role="model_repo", metadata=metadata)
        assert run.code == ExitCode.OK, run.stderr
        assert "model repository s3://models/prod" in run.stdout and "half_plus_two, resnet" in run.stdout
        s3 = boto3.client("s3", endpoint_url=f"http://{node_ip}:9000", aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}))
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="models", Prefix="prod/")["Contents"]}
        assert "prod/half_plus_two/1/model.onnx" in keys and "prod/resnet/1/model.onnx" in keys
        # A model the operator already put in the bucket is never overwritten: seeding is done once.
        s3.put_object(Bucket="models", Key="prod/resnet/1/model.onnx", Body=b"operator's own")
        run = run_hook(data_dir, "restart", {}, role="model_repo", metadata=metadata)
        assert run.code == ExitCode.OK, run.stderr
        assert s3.get_object(Bucket="models", Key="prod/resnet/1/model.onnx")["Body"].read() == b"operator's own"
    finally:
        agent.stop()


def test_stop_lets_in_flight_requests_finish_and_holds_the_services_down_until_start(node):
    # A request that takes a while (a large batch) is in flight when stop begins.
    slow_body = json.dumps({"instances": [1.0] * 1_500_000}).encode()
    result = {}

    def slow_request():
        result["status"], body = http("POST", f"http://{node.ip}:8080/v1/models/half_plus_two:predict",
                                      slow_body, timeout=60)
        result["predictions"] = len(json.loads(body)["predictions"]) if result["status"] == 200 else 0
        result["finished"] = time.monotonic()

    thread = threading.Thread(target=slow_request)
    thread.start()
    wait_for(lambda: envoy_stat(node, "cluster.serving_rest.upstream_rq_active") >= 1, 10, 0.01,
             "the slow request to reach the model server")
    stop_began = time.monotonic()
    run = run_hook(node.data_dir, "stop", {})
    thread.join()
    assert run.code == ExitCode.OK, run.stderr
    assert result.pop("finished") > stop_began, "the request was not in flight when stop began"
    assert result == {"status": 200, "predictions": 1_500_000}
    assert "stopped model_server, envoy" in run.stdout
    assert process_pid(node, "model_server") is None and process_pid(node, "envoy") is None
    assert not listening(node.ip, 8080) and not listening(node.ip, 8501)
    assert node.status()["lifecycle"] == {"stopped": True, "draining": False}
    assert run_hook(node.data_dir, "health_check.check_cmd").code == ExitCode.FAILED

    # Neither a metadata change nor an agent restart brings them back before start.
    tree = dict(node.tree, env={**node.tree["env"], "enable.access.log": "false"})
    node.update(tree)
    node.stop()
    node.start()
    # The agent starts processes while it applies; once it applied this tree, nothing
    # more would start.
    wait_for(lambda: node.status()["up_to_date"] and node.status()["params"]["enable.access.log"] is False,
             20, what="agent back, with the new tree applied")
    assert not listening(node.ip, 8080) and not listening(node.ip, 8501)

    run = run_hook(node.data_dir, "start", {})
    assert run.code == ExitCode.OK, run.stderr
    assert "serves half_plus_two" in run.stdout
    assert predict(node.ip)[0] == 200  # start returned once the node serves
    assert run_hook(node.data_dir, "health_check.check_cmd").code == ExitCode.OK


def test_restart_brings_up_a_new_model_server_and_serves_again(node):
    before = process_pid(node, "model_server")
    run = run_hook(node.data_dir, "restart", {"drain_timeout": 5})
    assert run.code == ExitCode.OK, run.stderr
    assert process_pid(node, "model_server") not in (None, before)
    assert predict(node.ip)[0] == 200


async def test_monitor_prints_one_json_object_within_5s_under_load(node):
    import asyncio

    # Counters run since Envoy started (the platform's statistics_type is delta).
    before = json.loads((await asyncio.to_thread(run_hook, node.data_dir, "monitor")).stdout)
    async with Load(node.ip, concurrency=8) as load:
        # The monitor's rate is Envoy's count over its last RATE_WINDOW seconds (fewer on a
        # young agent, idle time included). Once the load has run longer than that window
        # plus a sample interval, the window holds load only, and the clients' rate over
        # the same span (taken at the hook's start and end) is its independent measure.
        load_began = time.monotonic()
        while time.monotonic() - load_began < RATE_WINDOW + 2 * SAMPLE_INTERVAL:
            await load.wait_requests(50)
        rate_before = load.result.rate_over(RATE_WINDOW)
        run = await asyncio.to_thread(run_hook, node.data_dir, "monitor")
        rate_after = load.result.rate_over(RATE_WINDOW)
        assert run.seconds < MONITOR_LIMIT
        slowest_ms = max(load.result.latencies) * 1000
    assert run.code == ExitCode.OK, run.stderr
    values = json.loads(run.stdout)
    assert set(values) == {item.name for item in ITEMS}
    assert all(isinstance(v, int) for v in values.values())
    assert values["agent_up"] == 1 and values["healthy"] == 1
    assert values["requests_2xx"] - before["requests_2xx"] >= 400
    assert values["requests_5xx"] == before["requests_5xx"]
    # x100 figures: the clients' rate over the monitor's window (within a factor of two:
    # the windows' edges differ by up to a sample interval), and Envoy's latencies inside
    # what clients saw.
    rates = (rate_before, rate_after)
    assert 0.5 * min(rates) <= values["requests_per_second"] / 100 <= 2 * max(rates), (values["requests_per_second"], rates)
    # Envoy records request times in whole milliseconds: on an idle machine most of
    # half_plus_two's requests take under 1 ms and the median is 0.
    assert 0 <= values["latency_p50"] <= values["latency_p99"]
    assert values["latency_p50"] / 100 <= 2 * slowest_ms + 1, (values["latency_p50"], slowest_ms)
    assert values["loaded_models"] == 1 and values["model_available"] == 1
    assert values["model_server_memory"] > 10 and values["envoy_memory"] > 5
    assert 0 < values["memory_usage"] <= 10000 and values["metadata_lag"] == 0
    assert load.result.failed == 0, load.result


def hang_then_repair(node: Node, pid: int, symptom: str, process: str) -> None:
    """Hang one process (SIGSTOP): the check names the symptom, the action restarts it."""
    os.kill(pid, signal.SIGSTOP)
    check = run_hook(node.data_dir, "health_check.check_cmd")
    assert check.code == ExitCode.FAILED and symptom in check.stdout
    action = run_hook(node.data_dir, "health_check.action_cmd")
    assert action.code == ExitCode.OK, action.stderr + action.stdout
    assert f"restarted {process}\n" in action.stdout


def test_health_action_restarts_only_what_is_broken(node):
    assert run_hook(node.data_dir, "health_check.check_cmd").code == ExitCode.OK
    envoy, server = node.envoy_pid(), process_pid(node, "model_server")
    hang_then_repair(node, server, "the model server does not answer", "model_server")
    assert node.envoy_pid() == envoy and process_pid(node, "model_server") not in (None, server)

    server = process_pid(node, "model_server")
    hang_then_repair(node, envoy, "Envoy is not ready", "envoy")
    assert node.envoy_pid() != envoy and process_pid(node, "model_server") == server
    assert predict(node.ip)[0] == 200


def test_unapplied_metadata_is_unhealthy_and_restarts_nothing(node):
    envoy, server = node.envoy_pid(), process_pid(node, "model_server")
    node.update(dict(node.tree, env={**node.tree["env"], "http.port": "8501"}))
    wait_for(lambda: node.status()["last_rejection"], 5, what="rejection")
    check = run_hook(node.data_dir, "health_check.check_cmd")
    assert check.code == ExitCode.FAILED and "port 8501 is reserved" in check.stdout
    action = run_hook(node.data_dir, "health_check.action_cmd", {"timeout": 3})
    assert action.code == ExitCode.TIMED_OUT and "nothing to restart" in action.stdout
    assert node.envoy_pid() == envoy and process_pid(node, "model_server") == server


def test_hooks_without_an_agent_answer_with_their_documented_codes(data_dir):
    assert run_hook(data_dir, "health_check.check_cmd").code == ExitCode.NO_AGENT
    run = run_hook(data_dir, "monitor")
    assert run.code == ExitCode.OK and json.loads(run.stdout) == {"agent_up": 0}
    assert run_hook(data_dir, "stop", {}).code == ExitCode.OK  # nothing runs: nothing to stop
    run = run_hook(data_dir, "start", {})
    assert run.code == ExitCode.NO_AGENT and "no agent runs" in run.stderr
    assert run_hook(data_dir, "scale_in.pre_check").code == ExitCode.NO_AGENT


def test_invalid_service_params_are_a_usage_error(data_dir, tmp_path):
    from tests.harness.platform_hooks import service

    cmd, _ = service("model_serving", "stop")
    import subprocess

    out = subprocess.run([cmd, "[1, 2]"], env={**os.environ, "INFERENCE_AGENT_DATA_DIR": str(data_dir)},
                         capture_output=True, text=True, timeout=120)  # catches a hang only
    assert out.returncode == ExitCode.USAGE and "must be a JSON object" in out.stderr
