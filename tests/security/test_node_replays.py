"""Replays of the attacks on the node itself: idle connections to the console, wrong
passwords, a foreign Host, garbage request lines, a rejected secret. After each the
seed's predict answers, no process restarted, the model server's RSS is bounded."""

from __future__ import annotations

import base64
import copy
import resource
import socket
import subprocess
import sys
import time

import psutil
import pytest

from agent import limits
from tests.harness.node import http, wait_for
from tests.security.attacks import http_raw

CONSOLE = 8090


@pytest.fixture
def t(target):
    yield target
    target.assert_healthy()


def _auth(password: str) -> str:
    return "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()


def _console_get(ip: str, path: str = "/", password: str = "s3cret-pass", host: str | None = None) -> tuple[int, bytes]:
    head = (f"GET {path} HTTP/1.1\r\nHost: {host or ip}\r\nAuthorization: {_auth(password)}\r\n"
            "Connection: close\r\n\r\n").encode()
    return http_raw(ip, CONSOLE, head)


def test_idle_connections_cannot_exhaust_the_agent(t):
    agent = psutil.Process(t.start.agent)
    # More idle connections than the 1024 descriptors that used to exhaust the agent.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    idle = []
    try:
        for _ in range(1100):
            idle.append(socket.create_connection((t.ip, CONSOLE), timeout=5))
        # Past the cap the console closes connections at once; the agent's descriptors
        # stay bounded and its control socket answers.
        assert agent.num_fds() < 1024
        assert t.node.status()["up_to_date"] is not None
        # Connections that never send a request are closed after the header deadline.
        deadline = time.monotonic() + limits.CONSOLE_HEADER_TIMEOUT + 20
        for s in idle:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            assert s.recv(1) == b""
    finally:
        for s in idle:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert _console_get(t.ip)[0] == 200


def test_wrong_passwords_are_slowed_and_logged(t):
    codes = [_console_get(t.ip, "/", f"guess-{i}")[0] for i in range(30)]
    assert codes[0] == 401 and codes.count(429) >= 25
    log = (t.node.data_dir / "logs" / "agent.log").read_text(errors="replace")
    assert "console.login_failed" in log and "guess-" not in log
    wait_for(lambda: _console_get(t.ip)[0] == 200, limits.LOGIN_MAX_DELAY + 5, 0.5, "the right password accepted")


def test_console_refuses_a_foreign_host(t):
    assert _console_get(t.ip, host="rebind.attacker.example")[0] == 421
    assert _console_get(t.ip, host=f"{t.ip}:{CONSOLE}")[0] == 200
    assert _console_get(t.ip, host="localhost")[0] == 200


def test_garbage_request_lines_do_not_flood_the_log(t):
    agent_log = t.node.data_dir / "logs" / "agent.log"
    before = agent_log.stat().st_size
    for _ in range(500):
        http_raw(t.ip, CONSOLE, b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
    growth = agent_log.stat().st_size - before
    assert growth < 20_000, f"agent.log grew by {growth} bytes for 500 bad requests"


def test_filters_that_cannot_finish_in_bounded_time_are_refused(t):
    status, body = _console_get(t.ip, "/api/logs/tail/agent.log?q=a%0Aa")
    assert status == 400 and b"line break" in body


SECRET = "SECRET-9c1e"


@pytest.mark.parametrize("key, value", [("s3.secret.key", SECRET + " "), ("web.password", SECRET * 20),
                                        ("web.password", SECRET + "\n")])
def test_a_rejected_secret_is_never_echoed(t, key, value):
    good = copy.deepcopy(t.node.tree)
    bad = copy.deepcopy(good)
    bad["env"][key] = value
    t.node.update(bad)
    try:
        wait_for(lambda: any(key in r for r in (t.node.status().get("last_rejection") or {}).get("reasons") or []),
                 10, 0.1, f"{key} rejected")
        out = subprocess.run([sys.executable, "-m", "agent", "validate", "--metadata", str(t.node.metadata)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and key in out.stderr
        status = subprocess.run([sys.executable, "-m", "agent", "status", "--data-dir", str(t.node.data_dir)],
                                capture_output=True, text=True, timeout=30).stdout
        places = {"validate": out.stdout + out.stderr, "status": status, "stderr": t.node.stderr()}
        for log in (t.node.data_dir / "logs").glob("*"):
            if log.is_file():
                places[log.name] = log.read_text(errors="replace")
        for path in ("/", "/api/cluster", "/logs", "/api/logs", "/models", "/api/models", "/logs/view/agent.log",
                     "/api/logs/tail/agent.log", "/logs/view/envoy_error.log", "/metrics"):
            places[f"console {path}"] = _console_get(t.ip, path)[1].decode(errors="replace")
        assert all(SECRET not in text for text in places.values()), [k for k, v in places.items() if SECRET in v]
    finally:
        t.node.update(good)
        wait_for(lambda: t.node.status()["up_to_date"], 10, 0.1, "good metadata applied again")
