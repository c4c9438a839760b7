"""Local process management with real processes: restart with backoff, adoption by a new
supervisor, clean stop of the whole process group."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import psutil

from agent.metrics import Metrics
from agent.processes.supervisor import ProcessSpec, Supervisor

SLEEPER = (sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)")


def gone(p: psutil.Process) -> bool:
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_until(condition, timeout=10.0):
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_crashed_process_is_restarted_and_logged(tmp_path):
    sup = Supervisor(tmp_path, Metrics())
    spec = ProcessSpec("sleeper", SLEEPER, tmp_path / "sleeper.log")
    await sup.ensure([spec])
    await wait_until(lambda: (tmp_path / "sleeper.log").exists() and "up" in (tmp_path / "sleeper.log").read_text())
    first = sup.pid("sleeper")
    os.kill(first, signal.SIGKILL)
    await wait_until(lambda: sup.pid("sleeper") not in (None, first))
    assert sup.status()["sleeper"]["restarts"] == 1
    await wait_until(lambda: (tmp_path / "sleeper.log").read_text().count("up") == 2)
    second = psutil.Process(sup.pid("sleeper"))
    await sup.stop_all()
    await wait_until(lambda: gone(second), 2)


async def test_changed_spec_restarts_and_stop_kills_the_group(tmp_path):
    sup = Supervisor(tmp_path, Metrics())
    # A child that itself starts a grandchild: stopping must reach both.
    tree = (sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(600)']); time.sleep(600)")
    await sup.ensure([ProcessSpec("tree", tree, tmp_path / "t.log")])
    await wait_until(lambda: sup.pid("tree") and len(psutil.Process(sup.pid("tree")).children()) == 1)
    parent = psutil.Process(sup.pid("tree"))
    child = parent.children()[0]
    await sup.ensure([ProcessSpec("tree", tree, tmp_path / "t.log", generation="2")])
    await wait_until(lambda: sup.pid("tree") not in (None, parent.pid))
    await wait_until(lambda: gone(parent) and gone(child), 2)
    await sup.ensure([])
    assert sup.status() == {}


async def test_new_supervisor_adopts_running_process_instead_of_restarting(tmp_path):
    """An agent killed -9 leaves its processes serving; the next one adopts them."""
    spec = ProcessSpec("sleeper", SLEEPER, tmp_path / "s.log")
    script = f"""
import asyncio, sys
from pathlib import Path
from agent import log
from agent.metrics import Metrics
from agent.processes.supervisor import ProcessSpec, Supervisor
log.setup("warning")
async def main():
    sup = Supervisor(Path({str(tmp_path)!r}), Metrics())
    await sup.ensure([ProcessSpec("sleeper", {SLEEPER!r}, Path({str(tmp_path / "s.log")!r}))])
    while not sup.pid("sleeper"):
        await asyncio.sleep(0.05)
    print(sup.pid("sleeper"), flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""
    agent = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE)
    pid = int(await asyncio.wait_for(agent.stdout.readline(), 10))
    agent.kill()
    await agent.wait()
    proc = psutil.Process(pid)
    assert not gone(proc)

    sup = Supervisor(tmp_path, Metrics())
    await sup.ensure([spec])
    await wait_until(lambda: sup.pid("sleeper"))
    assert sup.pid("sleeper") == pid and sup.status()["sleeper"]["adopted"]
    # A different command line is not adopted: it would be another program.
    await sup.ensure([ProcessSpec("sleeper", SLEEPER + ("x",), tmp_path / "s.log")])
    await wait_until(lambda: sup.pid("sleeper") not in (None, pid))
    await wait_until(lambda: gone(proc), 2)
    await sup.stop_all()
