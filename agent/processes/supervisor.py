"""Local process management: start, watch, restart with backoff, and stop the node's
processes (Envoy, the model server) when systemd does not run them.

Processes outlive an agent that dies without stopping them (kill -9, a crash): a new
agent adopts them from their pid records instead of restarting them, so an agent
restart never interrupts traffic. A clean agent shutdown (SIGTERM) stops them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import psutil

from agent import log
from agent.envfile import read_env
from agent.metrics import Metrics

logger = log.get(__name__)

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0  # seconds up after which the backoff resets
STOP_GRACE = 10.0


@dataclass(frozen=True)
class ProcessSpec:
    """What to run. A change of argv, env or `generation` restarts the process."""

    name: str
    argv: tuple[str, ...]
    log_file: Path
    env: tuple[tuple[str, str], ...] = ()
    # Bumped to restart a process whose command line is unchanged (e.g. new bootstrap content).
    generation: str = ""
    # Variables read from this file (agent/envfile.py, mode 0600) at each start: secrets
    # reach the process without its command line, the pid record or status. Put a hash
    # of the file's content in `generation` so that a change restarts the process.
    env_file: Path | None = None


class ProcessManager(Protocol):
    """What the agent needs of whatever runs its processes: this module's Supervisor,
    systemd units (agent/processes/systemd.py), or either wrapped by NodeProcesses
    (agent/processes/held.py)."""

    async def ensure(self, specs: list[ProcessSpec]) -> None: ...
    async def restart(self, name: str) -> None: ...
    async def stop(self, name: str) -> None: ...
    async def stop_all(self) -> None: ...
    def pid(self, name: str) -> int | None: ...
    def status(self) -> dict[str, dict]: ...


@dataclass
class ProcessState:
    """What status shows about one supervised process."""

    pid: int | None = None
    running: bool = False
    restarts: int = 0
    started_at: float | None = None
    last_exit: int | None = None
    adopted: bool = False
    error: str | None = None  # why the last start failed


@dataclass
class _Managed:
    spec: ProcessSpec
    task: asyncio.Task | None = None
    state: ProcessState = field(default_factory=ProcessState)


class Supervisor:
    """Owns the node's processes: `ensure(specs)` makes the running set match."""

    def __init__(self, run_dir: Path, metrics: Metrics):
        self.run_dir = run_dir
        self.metrics = metrics
        self._procs: dict[str, _Managed] = {}

    def status(self) -> dict[str, dict]:
        """State of each process, JSON-ready."""
        return {name: asdict(m.state) for name, m in self._procs.items()}

    def pid(self, name: str) -> int | None:
        """Current pid of a running process, or None."""
        m = self._procs.get(name)
        return m.state.pid if m and m.state.running else None

    async def ensure(self, specs: list[ProcessSpec]) -> None:
        """Start new processes, restart changed ones, stop ones no longer wanted."""
        wanted = {s.name: s for s in specs}
        for name in list(self._procs):
            if name not in wanted:
                await self.stop(name)
        for name, spec in wanted.items():
            current = self._procs.get(name)
            if current and current.spec == spec:
                continue
            if current:
                logger.info("process.restart_for_change", process=name)
                await self.stop(name)
            self._start(spec)

    async def restart(self, name: str) -> None:
        """Stop and start one process with its current spec."""
        m = self._procs.get(name)
        if m:
            await self.stop(name)
            self._start(m.spec)

    def _start(self, spec: ProcessSpec) -> None:
        m = _Managed(spec)
        self._procs[spec.name] = m
        m.task = asyncio.create_task(self._keep_running(m), name=f"supervise-{spec.name}")

    async def stop(self, name: str) -> None:
        """Stop one process (SIGTERM, then SIGKILL after a grace period) and forget it."""
        m = self._procs.pop(name, None)
        if m is None:
            return
        if m.task:
            m.task.cancel()
            await asyncio.gather(m.task, return_exceptions=True)
        self._record_path(name).unlink(missing_ok=True)

    async def stop_all(self) -> None:
        """Stop every process (clean agent shutdown)."""
        await asyncio.gather(*(self.stop(n) for n in list(self._procs)))

    def _record_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def _adoptable(self, spec: ProcessSpec) -> psutil.Process | None:
        try:
            record = json.loads(self._record_path(spec.name).read_text())
            proc = psutil.Process(record["pid"])
            if (
                record.get("spec") == _spec_key(spec)
                and abs(proc.create_time() - record["create_time"]) < 0.01
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                return proc
        except (OSError, ValueError, KeyError, psutil.Error):
            pass
        return None

    async def _keep_running(self, m: _Managed) -> None:
        backoff = BACKOFF_START
        adopted = self._adoptable(m.spec)
        while True:
            started = time.monotonic()
            if adopted is not None:
                await self._watch_adopted(m, adopted)
                adopted = None
            else:
                await self._run_once(m)
            if time.monotonic() - started > STABLE_AFTER:
                backoff = BACKOFF_START
            m.state.restarts += 1
            self.metrics.process_restarts.labels(m.spec.name).inc()
            logger.warning("process.exited", process=m.spec.name, code=m.state.last_exit, restart_in=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _watch_adopted(self, m: _Managed, proc: psutil.Process) -> None:
        m.state = ProcessState(pid=proc.pid, running=True, restarts=m.state.restarts,
                               started_at=proc.create_time(), adopted=True)
        logger.info("process.adopted", process=m.spec.name, pid=proc.pid)
        try:
            while proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                await asyncio.sleep(0.5)
        except psutil.NoSuchProcess:
            pass
        except asyncio.CancelledError:
            await _terminate_pid(proc.pid)
            raise
        finally:
            m.state.running = False

    async def _run_once(self, m: _Managed) -> None:
        spec = m.spec
        spec.log_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(spec.log_file, "ab") as out:
                env = {**os.environ, **dict(spec.env)}
                if spec.env_file is not None:
                    env.update(read_env(spec.env_file))
                # Own session: stop signals reach the whole process group, and a Ctrl-C
                # in the agent's terminal does not hit the children first.
                proc = await asyncio.create_subprocess_exec(
                    *spec.argv, stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL,
                    env=env, start_new_session=True,
                )
        except OSError as e:  # a binary or file gone since the plan: retried with backoff
            m.state = ProcessState(restarts=m.state.restarts, error=f"cannot start {spec.argv[0]}: {e.strerror or e}")
            logger.error("process.start_failed", process=spec.name, error=m.state.error)
            return
        ps = psutil.Process(proc.pid)
        self._record_path(spec.name).write_text(json.dumps(
            {"pid": proc.pid, "create_time": ps.create_time(), "spec": _spec_key(spec)}
        ))
        m.state = ProcessState(pid=proc.pid, running=True, restarts=m.state.restarts, started_at=time.time())
        logger.info("process.started", process=spec.name, pid=proc.pid)
        try:
            m.state.last_exit = await proc.wait()
        except asyncio.CancelledError:
            await _terminate_pid(proc.pid)
            await proc.wait()
            raise
        finally:
            m.state.running = False


def _spec_key(spec: ProcessSpec) -> list:
    key = [list(spec.argv), [list(e) for e in spec.env], spec.generation]
    # Only when set: the records of processes without one stay as they were (adoption).
    return key + [str(spec.env_file)] if spec.env_file is not None else key


async def _terminate_pid(pid: int) -> None:
    """SIGTERM the process group, wait up to STOP_GRACE, then SIGKILL it."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_GRACE
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        await asyncio.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
