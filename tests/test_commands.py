"""The agent's own commands as an operator runs them: validate on the shipped examples,
render without running anything, and `up` (the README's main command)."""

from __future__ import annotations

import signal
import subprocess
import sys

import psutil
import pytest
import yaml

from agent import PROJECT_ROOT
from tests.harness.foundation_trees import single_node_tree, write_tree
from tests.harness.node import predict, wait_for

EXAMPLES = sorted((PROJECT_ROOT / "examples").rglob("*.yaml"))


def agent(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60, **kwargs)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_shipped_example_is_valid(example):
    out = agent("validate", "--metadata", str(example))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"valid: {example}"


def test_render_writes_every_file_under_out_and_nothing_else(tmp_path):
    metadata, out, data = tmp_path / "m.yaml", tmp_path / "out", tmp_path / "data"
    write_tree(metadata, single_node_tree("127.0.0.9"))
    result = agent("render", "--metadata", str(metadata), "--out", str(out), "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == {
        "conf/envoy/bootstrap.yaml", "conf/envoy/dynamic/lds.yaml", "conf/envoy/dynamic/cds.yaml",
        "conf/envoy/dynamic/eds_serving_rest.yaml", "conf/envoy/dynamic/eds_serving_grpc.yaml",
        "conf/serving/models.config", "conf/serving/traffic.json",
    }
    # The files name the data directory they are meant for, which render leaves alone.
    bootstrap = yaml.safe_load((out / "conf/envoy/bootstrap.yaml").read_text())
    assert bootstrap["dynamic_resources"]["lds_config"]["path_config_source"]["path"] == f"{data}/conf/envoy/dynamic/lds.yaml"
    assert f'base_path: "{data}/models/half_plus_two"' in (out / "conf/serving/models.config").read_text()
    assert not data.exists()

    write_tree(metadata, single_node_tree("127.0.0.9", **{"http.port": "8500"}))
    result = agent("render", "--metadata", str(metadata), "--out", str(tmp_path / "out2"))
    assert result.returncode == 1 and "env/http.port: port 8500 is reserved" in result.stderr


def test_up_prepares_a_node_serves_and_stops_everything_on_ctrl_c(node_ip, tmp_path):
    metadata, data = tmp_path / "node.yaml", tmp_path / "inference-data"
    write_tree(metadata, single_node_tree(node_ip))
    proc = subprocess.Popen([sys.executable, "-m", "agent", "up", "--data-dir", str(data), "--metadata", str(metadata)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: predict(node_ip)[1] == {"predictions": [2.5, 3.0, 4.5]}, 60, 0.2, "up to serve")
        assert {p.name for p in (data / "models").iterdir()} == {"half_plus_two", "resnet", "digits"}
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert f"http://{node_ip}:8080/v1/models/half_plus_two:predict" in err
    wait_for(lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children),
             10, 0.1, "Envoy and the model server to stop")


def test_three_node_example_is_what_up_runs():
    from agent.commands.up import cluster_trees

    shipped = [yaml.safe_load((PROJECT_ROOT / "examples" / "three-node" / f"node{k}.yaml").read_text()) for k in (1, 2, 3)]
    assert shipped == cluster_trees(["127.0.0.1", "127.0.0.2", "127.0.0.3"])


def test_up_with_a_repo_node_syncs_the_serving_nodes_from_it_and_stops_on_ctrl_c(tmp_path, monkeypatch):
    import ipaddress

    from tests.harness.addresses import _ip_is_free, allocate_loopback_ip
    from tests.harness.repo_support import path_without_minio

    first = allocate_loopback_ip()
    while not _ip_is_free(str(ipaddress.IPv4Address(first) + 1)):
        first = allocate_loopback_ip()
    serving_ip, repo_ip = first, str(ipaddress.IPv4Address(first) + 1)
    data = tmp_path / "inference-data"
    # No MinIO installed: up runs the package's local S3 stand-in and says so.
    monkeypatch.setenv("PATH", path_without_minio())
    proc = subprocess.Popen([sys.executable, "-m", "agent", "up", "--nodes", "1", "--repo", "--first-ip", first,
                             "--data-dir", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: predict(serving_ip)[1] == {"predictions": [2.5, 3.0, 4.5]}, 120, 0.2, "up --repo to serve")
        # The serving node's model came from the repository, not from a local install.
        assert {p.name for p in (data / "node1" / "models").iterdir() if not p.name.startswith(".")} == {"half_plus_two"}
        repo = yaml.safe_load((data / "repo" / "metadata.yaml").read_text())
        assert repo["host"] == dict(repo["host"], ip=repo_ip, role="model_repo")
        keys = repo["env"]["s3.access.key"], repo["env"]["s3.secret.key"]
        assert keys[0].startswith("local-") and len(keys[1]) >= 24  # generated: no default key ships
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("minio" in " ".join(c.cmdline()) for c in children)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert f"model repository on {repo_ip}:9000" in err and "local S3 stand-in" in err
    assert f"http://{serving_ip}:8080/v1/models/half_plus_two:predict" in err and "repository node: http://" in err
    assert keys[1] not in err  # the banner names the file holding the secret, not the secret
    wait_for(lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children),
             15, 0.1, "MinIO, Envoy and the model server to stop")
