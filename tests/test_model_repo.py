"""The model_repo node's MinIO, run by the agent like its other processes: its command
line, environment file and data path, restart after kill -9, stop and start through the
platform's hooks, health and monitor, seeding, and a missing `minio` binary.

MinIO cannot be installed here: `minio` is the test double in tests/harness/minio_double/
(the package's local S3 stand-in: real S3 from moto) unless a real MinIO is on PATH."""

from __future__ import annotations

import json
import os
import signal
import stat

import psutil
import pytest

from agent.commands.hook import ExitCode
from tests.harness.node import Node, http, wait_for
from tests.harness.platform_hooks import repo_node_tree, run_hook
from tests.harness.repo_support import (  # noqa: F401  (minio_on_path: fixture)
    ACCESS_KEY, REPO_ENV, SECRET_KEY, is_minio_double, minio_on_path, path_without_minio, repo_client,
)


def minio_pid(node: Node) -> int | None:
    try:
        pid = json.loads((node.data_dir / "run" / "minio.json").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None
    return pid if psutil.pid_exists(pid) else None


def live(ip: str) -> bool:
    return http("GET", f"http://{ip}:9000/minio/health/live", timeout=1)[0] == 200


def seeded(node: Node) -> bool:
    return node.status()["repository"]["seed"] == "done"


@pytest.fixture
def repo(node_ip, data_dir, minio_on_path):
    tree = repo_node_tree(node_ip, **REPO_ENV, **{"model.base.path": "s3://models/prod"})
    node = Node(data_dir, tree)
    node.install_models()  # staged by init for the bucket
    node.start()
    wait_for(lambda: live(node_ip) and seeded(node), 60, 0.2, "MinIO up and seeded")
    yield node
    node.stop()


def test_minio_runs_with_its_command_line_private_env_file_and_data_path(repo, minio_on_path):
    pid = minio_pid(repo)
    proc = psutil.Process(pid)
    data = repo.data_dir / "minio" / "data"
    # What the agent ran (the test double execs Python: its own command line differs).
    record = json.loads((repo.data_dir / "run" / "minio.json").read_text())
    assert record["spec"][0] == [minio_on_path, "server", "--address", f"{repo.ip}:9000", str(data)]
    if not is_minio_double(minio_on_path):
        assert proc.cmdline() == record["spec"][0]
    else:
        assert proc.cmdline()[-4:] == ["server", "--address", f"{repo.ip}:9000", str(data)]
    # The credentials reach MinIO through its environment only, from a file of mode 0600.
    assert not any(SECRET_KEY in word or ACCESS_KEY in word for word in proc.cmdline())
    env = proc.environ()
    assert env["MINIO_ROOT_USER"] == ACCESS_KEY and env["MINIO_ROOT_PASSWORD"] == SECRET_KEY
    env_file = repo.data_dir / "conf" / "minio.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600 and SECRET_KEY in env_file.read_text()
    # ... and nowhere else the agent writes or shows.
    status = repo.status()
    assert SECRET_KEY not in json.dumps(status)
    assert SECRET_KEY not in (repo.data_dir / "run" / "minio.json").read_text()
    assert SECRET_KEY not in repo.stderr()
    assert status["processes"]["minio"]["running"] and status["problems"] == []

    # The agent seeded the bucket with the built-in models staged by init.
    s3 = repo_client(repo.ip)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="models", Prefix="prod/")["Contents"]}
    assert {"prod/half_plus_two/1/model.onnx", "prod/resnet/1/model.onnx"} <= keys
    assert sorted(status["repository"]["seeded"]["models"]) == ["digits", "half_plus_two", "resnet"]
    # A wrong key is refused.
    with pytest.raises(Exception, match="InvalidAccessKeyId|AccessDenied|SignatureDoesNotMatch"):
        repo_client(repo.ip, secret_key="wrong-secret-key", access_key="someone-else").list_buckets()

    check = run_hook(repo.data_dir, "health_check.check_cmd", role="model_repo")
    assert check.code == ExitCode.OK, check.stdout + check.stderr
    monitor = json.loads(run_hook(repo.data_dir, "monitor", role="model_repo").stdout)
    assert monitor["minio_up"] == 1 and monitor["healthy"] == 1
    page = http("GET", f"http://{repo.ip}:8090/")[1].decode()
    assert 'id="repository"' in page and "minio" in page


def test_minio_is_restarted_after_kill_9_and_keeps_its_data(repo):
    s3 = repo_client(repo.ip)
    s3.put_object(Bucket="models", Key="prod/kept/1/model.onnx", Body=b"operator's model")
    before = minio_pid(repo)
    os.killpg(before, signal.SIGKILL)
    wait_for(lambda: minio_pid(repo) not in (None, before) and live(repo.ip), 30, 0.1, "MinIO restarted")
    assert s3.get_object(Bucket="models", Key="prod/kept/1/model.onnx")["Body"].read() == b"operator's model"
    assert repo.status()["processes"]["minio"]["restarts"] >= 1
    # Seeding happened once: the operator's own copy of a built-in model is never overwritten.
    s3.put_object(Bucket="models", Key="prod/resnet/1/model.onnx", Body=b"operator's resnet")
    repo.stop()
    repo.start()
    wait_for(lambda: live(repo.ip) and seeded(repo), 60, 0.2, "agent back")
    assert s3.get_object(Bucket="models", Key="prod/resnet/1/model.onnx")["Body"].read() == b"operator's resnet"


def test_stop_stops_minio_and_start_brings_it_back(repo):
    run = run_hook(repo.data_dir, "stop", {}, role="model_repo")
    assert run.code == ExitCode.OK, run.stderr
    assert "minio" in run.stdout and minio_pid(repo) is None and not live(repo.ip)
    check = run_hook(repo.data_dir, "health_check.check_cmd", role="model_repo")
    assert check.code == ExitCode.FAILED and "stopped" in check.stdout

    run = run_hook(repo.data_dir, "start", {}, role="model_repo")
    assert run.code == ExitCode.OK, run.stderr
    assert live(repo.ip) and "built-in models seeded" in run.stdout and "half_plus_two" in run.stdout
    check = run_hook(repo.data_dir, "health_check.check_cmd", role="model_repo")
    assert check.code == ExitCode.OK, check.stdout


def test_a_missing_minio_binary_is_a_clear_error_in_status_health_and_console(node_ip, data_dir, monkeypatch):
    monkeypatch.setenv("PATH", path_without_minio())
    node = Node(data_dir, repo_node_tree(node_ip, **REPO_ENV))
    node.start()
    try:
        status = wait_for(lambda: (s := node.status())["applied_version"] and s, 30, 0.2, "metadata applied")
        assert any("MinIO is not installed" in p and "minio" in p for p in status["problems"]), status["problems"]
        assert "minio" not in status["processes"]
        check = run_hook(data_dir, "health_check.check_cmd", role="model_repo")
        assert check.code == ExitCode.FAILED and "MinIO is not installed" in check.stdout
        monitor = json.loads(run_hook(data_dir, "monitor", role="model_repo").stdout)
        assert monitor["minio_up"] == 0 and monitor["healthy"] == 0
        page = wait_for(lambda: http("GET", f"http://{node_ip}:8090/")[1].decode(), 20, 0.2, "console")
        assert "MinIO is not installed" in page
        # Envoy and the console work as on any node.
        assert status["processes"]["envoy"]["running"]
    finally:
        node.stop()


def test_the_s3_stand_in_bounds_requests_before_reading_them(node_ip, tmp_path, minio_on_path):
    import socket
    import subprocess

    if not is_minio_double(minio_on_path):
        pytest.skip("a real MinIO is on PATH: the bounds are MinIO's own")
    env = {**os.environ, "MINIO_ROOT_USER": ACCESS_KEY, "MINIO_ROOT_PASSWORD": SECRET_KEY}
    proc = subprocess.Popen([minio_on_path, "server", "--address", f"{node_ip}:9000", str(tmp_path / "d")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: live(node_ip), 30, 0.1, "stand-in up")
        s3 = repo_client(node_ip)
        s3.create_bucket(Bucket="models")

        def raw(head: str) -> bytes:
            """The whole answer: the stand-in closes the connection after it."""
            with socket.create_connection((node_ip, 9000), timeout=5) as sock:
                sock.sendall(head.encode())
                answer = b""
                while chunk := sock.recv(4096):
                    answer += chunk
                return answer

        auth = f"Authorization: AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20260101/us-east-1/s3/aws4_request, " \
               "SignedHeaders=host, Signature=0\r\n"
        # A declared 100 GiB body is refused at once, before a byte of it is read.
        answer = raw(f"PUT /models/huge HTTP/1.1\r\nHost: {node_ip}:9000\r\n{auth}Content-Length: {100 << 30}\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400") and b"EntityTooLarge" in answer
        answer = raw(f"PUT /models/chunked HTTP/1.1\r\nHost: {node_ip}:9000\r\n{auth}Transfer-Encoding: chunked\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 411") and b"MissingContentLength" in answer
        # Anonymous requests are refused; the stand-in keeps serving.
        assert http("GET", f"http://{node_ip}:9000/models")[0] == 403
        s3.put_object(Bucket="models", Key="m/1/model.onnx", Body=b"ok")
        assert s3.get_object(Bucket="models", Key="m/1/model.onnx")["Body"].read() == b"ok"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_health_action_restarts_a_hung_minio(repo):
    pid = minio_pid(repo)
    os.kill(pid, signal.SIGSTOP)  # running, but no longer answering
    check = run_hook(repo.data_dir, "health_check.check_cmd", role="model_repo")
    assert check.code == ExitCode.FAILED and f"MinIO does not answer on {repo.ip}:9000" in check.stdout
    action = run_hook(repo.data_dir, "health_check.action_cmd", role="model_repo")
    assert action.code == ExitCode.OK, action.stdout + action.stderr
    assert "restarted minio\n" in action.stdout
    assert minio_pid(repo) not in (None, pid) and live(repo.ip)
