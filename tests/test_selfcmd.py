"""Lifecycle commands from /self/cmd: once per id (across restarts), in order, with the
platform's cmd.log format, output in app.log, and the timeout enforced on the whole
process group."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

from agent.metrics import Metrics
from agent.nodeops.selfcmd import CommandRunner
from agent.state import Command

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (\S+) \[(executing|successful|failed\d+)\]: (.*)$")


class Node:
    """A runner with its worker task, as the daemon owns them."""

    def __init__(self, tmp_path: Path, kill_grace: float = 1.0):
        self.logs = tmp_path / "logs"
        self.state = tmp_path / "state"
        self.metrics = Metrics()
        self.runner = CommandRunner(self.logs, self.state, self.metrics, kill_grace=kill_grace)
        self.task = asyncio.create_task(self.runner.run())

    def cmd_log(self) -> list[tuple[str, str, str]]:
        path = self.logs / "cmd.log"
        if not path.exists():
            return []
        lines = path.read_text().splitlines()
        for line in lines:
            assert LINE.match(line), f"not the platform's cmd.log format: {line!r}"
        return [LINE.match(line).groups() for line in lines]

    async def until_finished(self, cmd_id: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, state, _ in self.cmd_log():
                if i == cmd_id and state != "executing":
                    return state
            await asyncio.sleep(0.02)
        raise AssertionError(f"command {cmd_id} did not finish; cmd.log: {self.cmd_log()}")

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def node(tmp_path):
    n = Node(tmp_path)
    yield n
    await n.stop()


async def _dead(pid: int, timeout: float = 2.0) -> bool:
    """True once `pid` is gone (a SIGKILL is delivered asynchronously)."""
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


async def test_runs_once_per_id_logging_as_the_platform(node, tmp_path):
    counter = tmp_path / "ran"
    cmd = Command("c-1", f"echo hello from c-1; echo x >> {counter}", 60)
    for _ in range(3):  # every applied snapshot submits the same command
        node.runner.submit(cmd)
        await asyncio.sleep(0)
    assert await node.until_finished("c-1") == "successful"
    node.runner.submit(cmd)  # finished: not queued again (commands run in order, so once
    node.runner.submit(Command("c-2", "true", 60))  # c-2 has finished, c-1 would have run)
    assert await node.until_finished("c-2") == "successful"
    assert counter.read_text() == "x\n"
    assert [(i, s, c) for i, s, c in node.cmd_log()] == [
        ("c-1", "executing", cmd.cmd), ("c-1", "successful", cmd.cmd),
        ("c-2", "executing", "true"), ("c-2", "successful", "true")]
    assert "hello from c-1\n" in (node.logs / "app.log").read_text()
    assert node.runner.last_finished_id == "c-2"
    node.runner.submit(None)  # no /self/cmd at all


async def test_failure_shows_the_exit_code(node):
    node.runner.submit(Command("c-2", "echo oops >&2; exit 3", 60))
    assert await node.until_finished("c-2") == "failed3"
    assert "oops" in (node.logs / "app.log").read_text()
    assert node.metrics.commands.labels(result="failed")._value.get() == 1


async def test_params_json_is_the_last_argument(node, tmp_path):
    script = tmp_path / "ctl.py"
    out = tmp_path / "args.json"
    script.write_text(f"import json, sys\njson.dump(sys.argv[1:], open({str(out)!r}, 'w'))\n")
    params = json.dumps({"model": "resnet 50", "quote": "it's"})
    quoted = "'" + params.replace("'", "'\\''") + "'"  # as the platform appends it
    node.runner.submit(Command("c-3", f"{sys.executable} {script} backup {quoted}", 60))
    assert await node.until_finished("c-3") == "successful"
    args = json.loads(out.read_text())
    assert args[0] == "backup" and json.loads(args[-1]) == {"model": "resnet 50", "quote": "it's"}


async def test_timeout_kills_the_whole_process_group(node, tmp_path):
    pids = tmp_path / "pids"
    cmd = Command("c-4", f"sleep 60 & echo $! > {pids}; trap '' TERM; sleep 60", 1)
    t0 = time.monotonic()
    node.runner.submit(cmd)
    state = await node.until_finished("c-4")
    assert state == "failed124"
    assert time.monotonic() - t0 < 1 + 1.0 + 1.0  # timeout + kill grace + slack
    background = int(pids.read_text())
    assert await _dead(background)
    assert node.metrics.commands.labels(result="timeout")._value.get() == 1


async def test_commands_wait_their_turn(node, tmp_path):
    order = tmp_path / "order"
    node.runner.submit(Command("a", f"echo a-start >> {order}; sleep 0.3; echo a-end >> {order}", 60))
    deadline = time.monotonic() + 10
    while not (order.exists() and order.read_text()):  # a is running
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    node.runner.submit(Command("b", f"echo b >> {order}", 60))
    node.runner.submit(Command("a", "echo never", 60))  # still running: not queued again
    assert await node.until_finished("b") == "successful"
    assert order.read_text().split() == ["a-start", "a-end", "b"]
    assert [i for i, s, _ in node.cmd_log() if s == "executing"] == ["a", "b"]


async def test_finished_ids_survive_a_restart(tmp_path):
    marker = tmp_path / "ran"
    cmd = Command("c-5", f"echo x >> {marker}", 60)
    first = Node(tmp_path)
    first.runner.submit(cmd)
    await first.until_finished("c-5")
    await first.stop()
    assert stat_mode(first.state / "lifecycle-commands.json") == 0o600

    second = Node(tmp_path)
    try:
        assert second.runner.last_finished_id == "c-5"
        second.runner.submit(cmd)
        second.runner.submit(Command("c-6", f"echo y >> {marker}", 60))
        await second.until_finished("c-6")
        assert marker.read_text() == "x\ny\n"
    finally:
        await second.stop()


async def test_agent_shutdown_kills_the_command_and_it_runs_again_later(tmp_path):
    pids = tmp_path / "pids"
    cmd = Command("c-7", f"sleep 60 & echo $! >> {pids}; sleep 60", 120)
    first = Node(tmp_path)
    first.runner.submit(cmd)
    while not pids.exists():
        await asyncio.sleep(0.02)
    await first.stop()
    assert await _dead(int(pids.read_text().split()[0]))
    assert [s for _, s, _ in first.cmd_log()] == ["executing", "failed137"]

    second = Node(tmp_path)
    try:
        assert second.runner.last_finished_id is None
        second.runner.submit(cmd)
        while len(pids.read_text().split()) < 2:
            await asyncio.sleep(0.02)
        assert second.runner.running == cmd
    finally:
        await second.stop()
    for pid in pids.read_text().split():
        assert await _dead(int(pid))


def stat_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


async def test_a_command_that_cannot_run_does_not_stop_the_runner(node, tmp_path):
    (node.logs / "cmd.log").mkdir(parents=True)  # cmd.log cannot be written
    node.runner.submit(Command("c-8", "true", 60))
    for _ in range(100):
        if node.runner.last_finished_id == "c-8":
            break
        await asyncio.sleep(0.02)
    assert node.runner.last_finished_id == "c-8"
    assert not node.task.done()
    node.runner.submit(Command("c-8", "true", 60))  # not retried on every snapshot
    assert node.runner.running is None and node.runner.last_finished_id == "c-8"
