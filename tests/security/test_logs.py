"""Logs stay bounded: agent.log rotates by size, the logs other processes append to are
rotated by copy-and-truncate, a repeated warning is rate-limited with a count of what
was suppressed, and the console lists the rotated files."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from agent import log
from agent.console.files import list_logs


def test_repeated_warnings_are_limited_and_counted():
    now = [0.0]
    limiter = log.RepeatLimiter(burst=3, window=60, clock=lambda: now[0])

    def record(msg):
        return logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, msg, None, None)

    passed = [limiter.filter(record("Error handling request")) for _ in range(100)]
    assert passed.count(True) == 3
    assert limiter.filter(record("another error")) is True  # a different kind has its own budget
    now[0] = 61
    late = record("Error handling request")
    assert limiter.filter(late) and "97 similar lines suppressed" in late.msg
    event = logging.LogRecord("x", logging.WARNING, __file__, 1, {"event": "e"}, None, None)
    limiter.filter(event)
    assert limiter.filter(logging.LogRecord("x", logging.INFO, __file__, 1, "info passes", None, None))


def test_agent_log_rotates_by_size(tmp_path):
    code = (
        "import pathlib, agent.log as l\n"
        f"l.setup('info', json=True, log_file=pathlib.Path({str(tmp_path / 'agent.log')!r}), max_bytes=20000, backups=2)\n"
        "g = l.get('t')\n"
        "for i in range(2000): g.info('line', i=i, pad='x' * 50)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["agent.log", "agent.log.1", "agent.log.2"]
    assert all((tmp_path / n).stat().st_size <= 20000 for n in names)
    last = (tmp_path / "agent.log").read_text().splitlines()[-1]
    assert json.loads(last)["i"] == 1999


def test_logs_of_other_processes_rotate_and_writers_keep_writing(tmp_path):
    target = tmp_path / "tensorflow_serving.log"
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfor line in sys.stdin: sys.stdout.write(line); sys.stdout.flush()"],
        stdin=subprocess.PIPE, stdout=open(target, "ab"), text=True)
    try:
        for i in range(300):
            writer.stdin.write(f"before {i} {'y' * 60}\n")
        writer.stdin.flush()
        from tests.harness.node import wait_for
        wait_for(lambda: target.stat().st_size > 20000, 10, what="the writer's lines")
        assert log.rotate_owned_logs(tmp_path, max_bytes=10000, backups=3) == ["tensorflow_serving.log"]
        writer.stdin.write("after\n")
        writer.stdin.flush()
        wait_for(lambda: target.read_bytes() == b"after\n", 10, what="the writer to go on at the start of the file")
    finally:
        writer.stdin.close()
        writer.wait()
    assert "before 299" in (tmp_path / "tensorflow_serving.log.1").read_text()
    assert log.rotate_owned_logs(tmp_path, max_bytes=10000, backups=3) == []
    (tmp_path / "agent.log").write_bytes(b"x" * 20000)
    assert log.rotate_owned_logs(tmp_path, max_bytes=10000) == []  # agent.log rotates itself
    assert {e.path for e in list_logs(tmp_path)} >= {"tensorflow_serving.log", "tensorflow_serving.log.1"}


def test_backups_are_bounded(tmp_path):
    target = tmp_path / "envoy.log"
    for i in range(6):
        target.write_bytes(b"%d" % i * 2000)
        log.rotate_owned_logs(tmp_path, max_bytes=1000, backups=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["envoy.log", "envoy.log.1", "envoy.log.2", "envoy.log.3"]
    assert (tmp_path / "envoy.log.1").read_bytes()[:1] == b"5"
