"""systemd: the units pass `systemd-analyze verify`, the agent speaks sd_notify
(READY=1 once its control socket answers, WATCHDOG=1 while it runs), and in systemd
mode the node's processes become units driven through systemctl.

No systemd runs as PID 1 here: the sd_notify side is the real protocol on a real
datagram socket; systemctl is a test double (tests/harness/systemctl_double.py)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import PROJECT_ROOT
from agent.processes.supervisor import ProcessSpec
from agent.processes.systemd import (
    BUILTIN_SERVER_UNIT, ENVOY_UNIT, TFSERVING_UNIT, SystemdUnits, env_file_content, memory_max, notify,
    watchdog_interval,
)
from tests.harness.foundation_trees import write_tree
from tests.harness.platform_hooks import repo_node_tree
from tests.harness.repo_support import ACCESS_KEY, REPO_ENV, SECRET_KEY, minio_on_path  # noqa: F401  (fixture)

UNITS_DIR = PROJECT_ROOT / "systemd"
UNIT_FILES = sorted(UNITS_DIR.glob("*.service"))


def unit_config(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file's settings: section -> key -> every value given (keys repeat in units)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif line and not line.startswith(("#", ";")):
            key, value = line.split("=", 1)
            current.setdefault(key, []).append(value)
    return sections


def test_every_unit_passes_systemd_analyze_verify():
    assert {p.name for p in UNIT_FILES} == {
        "inference-agent.service", "inference-envoy.service", "inference-model-server.service",
        "inference-tfserving.service", "inference-minio.service",
    }
    for path in UNIT_FILES:
        out = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and not out.stderr.strip(), f"{path.name}: {out.stderr}"


def test_agent_unit_is_notify_with_watchdog_and_always_restarted():
    service = unit_config(UNITS_DIR / "inference-agent.service")["Service"]
    assert service["Type"] == ["notify"]
    assert service["Restart"] == ["always"]
    assert service["WatchdogSec"][0].rstrip("s").isdigit()
    assert "INFERENCE_AGENT_PROCESS_MANAGER=systemd" in service["Environment"]
    # Process units restart on their own and read the command line the agent writes.
    for name in ("inference-envoy.service", "inference-model-server.service", "inference-tfserving.service",
                 "inference-minio.service"):
        s = unit_config(UNITS_DIR / name)["Service"]
        assert s["Restart"] == ["always"] and s["ExecStart"] == ["/usr/bin/env $ARGV"], name
        assert s["EnvironmentFile"][0].startswith("/data/conf/systemd/"), name


def _datagram_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.1)
    return sock, path


def _received(sock: socket.socket, until: float) -> list[str]:
    messages = []
    while time.monotonic() < until:
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return messages


def test_notify_reaches_the_socket_systemd_names(tmp_path, monkeypatch):
    sock, path = _datagram_socket(tmp_path)
    with sock:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
        assert notify("READY=1") is False
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert notify("READY=1") is True
        assert sock.recv(100) == b"READY=1"
    abstract = f"inference-agent-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as asock:
        asock.bind("\0" + abstract)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + abstract)
        assert notify("WATCHDOG=1") is True
        assert asock.recv(100) == b"WATCHDOG=1"


def test_watchdog_interval_is_half_of_watchdog_sec_for_this_process(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval() is None  # meant for another process
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 15.0
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval() is None


def test_agent_reports_ready_once_its_control_socket_answers_then_pings_the_watchdog(node_ip, data_dir, tmp_path):
    metadata = data_dir / "metadata.yaml"
    write_tree(metadata, repo_node_tree(node_ip))  # Envoy only: fast to start
    sock, path = _datagram_socket(tmp_path)
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "600000"}
    with sock, open(data_dir / "agent.stderr", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--metadata", str(metadata),
                                 "--data-dir", str(data_dir), "--no-console"], env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 20
            messages: list[str] = []
            while time.monotonic() < deadline and "READY=1" not in messages:
                messages += _received(sock, time.monotonic() + 0.2)
            assert "READY=1" in messages, (data_dir / "agent.stderr").read_text()[-2000:]
            assert (data_dir / "run" / "agent.sock").exists()
            assert stat.S_IMODE((data_dir / "run" / "agent.sock").stat().st_mode) == 0o600
            pings = [m for m in _received(sock, time.monotonic() + 1.6) if m == "WATCHDOG=1"]
            assert len(pings) >= 3  # every 0.3 s
            proc.terminate()
            assert proc.wait(30) == 0
            assert "STOPPING=1" in _received(sock, time.monotonic() + 0.5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def systemctl(tmp_path, monkeypatch):
    home = tmp_path / "systemctl"
    home.mkdir()
    monkeypatch.setenv("SYSTEMCTL_DOUBLE_DIR", str(home))
    script = home / "systemctl"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} {PROJECT_ROOT / 'tests' / 'harness' / 'systemctl_double.py'} \"$@\"\n")
    script.chmod(0o755)

    def calls() -> list[list[str]]:
        path = home / "calls.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        path.unlink(missing_ok=True)
        return [json.loads(line) for line in lines]

    return script, calls


def _specs(threads: int, backend_binary: str = sys.executable) -> list[ProcessSpec]:
    log = Path("/tmp/unused.log")
    return [
        ProcessSpec("envoy", ("/usr/bin/envoy", "-c", "/data/conf/envoy/bootstrap.yaml"), log, generation="g1"),
        ProcessSpec("model_server", (backend_binary, "-m", "agent", "serve", f"--intra_op_threads={threads}"), log,
                    env=(("AWS_SECRET_ACCESS_KEY", 'se"cr$et'),)),
    ]


async def test_systemd_mode_writes_private_command_lines_and_restarts_only_changed_units(tmp_path, systemctl):
    script, calls = systemctl
    env_dir = tmp_path / "conf" / "systemd"
    units = SystemdUnits(env_dir, systemctl=str(script))

    await units.ensure(_specs(2))
    assert stat.S_IMODE(env_dir.stat().st_mode) == 0o700
    model_env = env_dir / "model_server.env"
    assert stat.S_IMODE(model_env.stat().st_mode) == 0o600
    text = model_env.read_text()
    assert f"ARGV={sys.executable} -m agent serve --intra_op_threads=2\n" in text
    assert 'AWS_SECRET_ACCESS_KEY="se\\"cr\\$et"' in text
    started = [c for c in calls() if c[0] != "show"]
    assert ["restart", ENVOY_UNIT] in started and ["restart", BUILTIN_SERVER_UNIT] in started
    assert ["set-property", "--runtime", BUILTIN_SERVER_UNIT, f"MemoryMax={memory_max()}"] in started
    assert units.pid("envoy") and units.status()["model_server"]["unit"] == BUILTIN_SERVER_UNIT

    await units.ensure(_specs(2))  # nothing changed: nothing restarted
    assert [c for c in calls() if c[0] != "show"] == []

    await units.ensure(_specs(4))  # a vertical scale: only the model server restarts
    changed = [c for c in calls() if c[0] != "show"]
    assert ["restart", BUILTIN_SERVER_UNIT] in changed and ["restart", ENVOY_UNIT] not in changed
    assert "--intra_op_threads=4" in model_env.read_text()

    tf = str(tmp_path / "tensorflow_model_server")
    await units.ensure(_specs(4, backend_binary=tf))  # backend switch: the other unit
    switched = [c for c in calls() if c[0] != "show"]
    assert ["stop", BUILTIN_SERVER_UNIT] in switched and ["restart", TFSERVING_UNIT] in switched

    await units.stop_all()  # an agent shutdown leaves the units serving
    assert calls() == []
    await units.ensure(_specs(4, backend_binary=tf)[:1])
    assert ["stop", TFSERVING_UNIT] in calls()


async def test_systemd_mode_runs_minio_with_its_credentials_only_in_the_private_env_file(
        tmp_path, systemctl, minio_on_path, node_ip):
    from agent.paths import Paths
    from agent.pipeline.plan import make_plan
    from agent.processes.systemd import MINIO_UNIT
    from agent.state import parse_cluster_state, normalize_tree

    script, calls = systemctl
    paths = Paths(tmp_path / "data")
    state = parse_cluster_state(normalize_tree(repo_node_tree(node_ip, **REPO_ENV)))
    plan = make_plan(state, paths, ())
    minio = next(p for p in plan.processes if p.name == "minio")
    env_file = next(f for f in plan.files if f.path == paths.conf / "minio.env")
    assert env_file.mode == 0o600 and plan.problems == ()
    env_file.path.parent.mkdir(parents=True)
    env_file.path.write_bytes(env_file.content)
    units = SystemdUnits(tmp_path / "conf" / "systemd", systemctl=str(script))
    await units.ensure([minio])
    unit_env = tmp_path / "conf" / "systemd" / "minio.env"
    assert stat.S_IMODE(unit_env.stat().st_mode) == 0o600
    text = unit_env.read_text()
    assert f'MINIO_ROOT_USER="{ACCESS_KEY}"' in text and f'MINIO_ROOT_PASSWORD="{SECRET_KEY}"' in text
    argv = next(line for line in text.splitlines() if line.startswith("ARGV="))
    assert argv == f"ARGV={minio_on_path} server --address {node_ip}:9000 {paths.data_dir / 'minio' / 'data'}"
    assert ["restart", MINIO_UNIT] in calls()
    assert units.status()["minio"]["unit"] == MINIO_UNIT


def test_command_lines_that_systemd_would_split_differently_are_refused():
    spec = ProcessSpec("envoy", ("/usr/bin/envoy", "-c", "/data/my conf/bootstrap.yaml"), Path("/tmp/x"))
    with pytest.raises(ValueError, match="cannot be passed"):
        env_file_content(spec)


def test_memory_max_leaves_room_for_the_agent_and_envoy():
    gib = 1024 ** 3
    assert memory_max(8 * gib) == 8 * gib - 768 * 1024 * 1024
    assert memory_max(1 * gib) == gib // 2


def test_systemd_mode_is_chosen_by_the_agent_unit(monkeypatch, tmp_path):
    from agent.processes.systemd import systemd_mode

    monkeypatch.delenv("INFERENCE_AGENT_PROCESS_MANAGER", raising=False)
    assert not systemd_mode()
    monkeypatch.setenv("INFERENCE_AGENT_PROCESS_MANAGER", "systemd")
    assert systemd_mode()


async def test_keep_watchdog_pings_only_while_the_agent_works(tmp_path, monkeypatch):
    from agent.processes.systemd import keep_watchdog

    sock, path = _datagram_socket(tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    working = True

    async def alive() -> bool:
        return working

    def drain() -> list[str]:
        sock.setblocking(False)
        messages = []
        try:
            while True:
                messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages

    with sock:
        task = asyncio.create_task(keep_watchdog(0.1, alive))
        got = []
        deadline = time.monotonic() + 10
        while got.count("WATCHDOG=1") < 3:  # pings while the loop is alive
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.05)
            got += drain()
        working = False
        await asyncio.sleep(0.3)  # a measurement window of 3 intervals (3 pings above)
        drain()  # a ping that was already on its way
        await asyncio.sleep(0.3)  # the same window: no ping now
        later = drain()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert later == []
