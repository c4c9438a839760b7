"""systemd integration: the agent's readiness and watchdog notifications (sd_notify),
and, in systemd mode, the node's processes run as systemd units instead of children.

systemd mode is chosen by the agent's own unit (`INFERENCE_AGENT_PROCESS_MANAGER=systemd`
in systemd/inference-agent.service). Each process the plan wants (a `ProcessSpec`)
becomes one unit from systemd/ whose command line comes from an environment file the
agent writes, `<conf>/systemd/<process>.env` (mode 0600: it may hold object-storage
keys for TF Serving), as `ARGV=...`; the unit runs `/usr/bin/env $ARGV`. A changed file
restarts the unit; units outlive an agent restart, so restarting the agent never
interrupts traffic.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import psutil

from agent import log
from agent.envfile import env_lines, read_env
from agent.files import RenderedFile, replace_files
from agent.processes.names import ENVOY, MINIO, MODEL_SERVER
from agent.processes.supervisor import ProcessSpec

logger = log.get(__name__)

PROCESS_MANAGER_ENV = "INFERENCE_AGENT_PROCESS_MANAGER"
AGENT_UNIT = "inference-agent.service"
# Process name (agent/pipeline/plan.py) -> unit. The model server has one unit per backend.
ENVOY_UNIT = "inference-envoy.service"
BUILTIN_SERVER_UNIT = "inference-model-server.service"
TFSERVING_UNIT = "inference-tfserving.service"
MINIO_UNIT = "inference-minio.service"
UNITS = (ENVOY_UNIT, BUILTIN_SERVER_UNIT, TFSERVING_UNIT, MINIO_UNIT)
# Memory the model server's unit leaves to the agent, Envoy and the system (MemoryMax).
MEMORY_RESERVE = 768 * 1024 * 1024
SYSTEMCTL_TIMEOUT = 30.0


def systemd_mode() -> bool:
    """True when the agent's unit asks it to run the node's processes as systemd units."""
    return os.environ.get(PROCESS_MANAGER_ENV) == "systemd"


def systemd_running() -> bool:
    """True when systemd is the init system of this machine (sd_booted)."""
    return Path("/run/systemd/system").is_dir()


def notify(message: str) -> bool:
    """Send one sd_notify message (READY=1, WATCHDOG=1, STOPPING=1, STATUS=...) to the
    socket systemd gave us; False when not started by systemd with Type=notify."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(message.encode())
    except OSError as e:
        logger.warning("systemd.notify_failed", message=message, error=str(e))
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of the unit's WatchdogSec), or None when
    systemd watches no watchdog for this process."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1e6 / 2


async def keep_watchdog(interval: float, alive: Callable[[], Awaitable[bool]]) -> None:
    """Ping systemd's watchdog every `interval` seconds while `alive()` says the agent
    works; a wedged agent stops pinging and systemd restarts it. Runs until cancelled."""
    while True:
        try:
            async with asyncio.timeout(interval):
                ok = await alive()
        except (TimeoutError, OSError):
            ok = False
        if ok:
            notify("WATCHDOG=1")
        else:
            logger.warning("systemd.watchdog_skipped")
        await asyncio.sleep(interval)


def unit_for(spec: ProcessSpec) -> str:
    """The unit that runs `spec` (by process name; the model server by backend)."""
    if spec.name == ENVOY:
        return ENVOY_UNIT
    if spec.name == MODEL_SERVER:
        return TFSERVING_UNIT if Path(spec.argv[0]).name == "tensorflow_model_server" else BUILTIN_SERVER_UNIT
    if spec.name == MINIO:
        return MINIO_UNIT
    raise ValueError(f"no systemd unit for process {spec.name!r} (units: {', '.join(UNITS)})")


def _env_word(word: str, what: str) -> str:
    # $ARGV is split at whitespace by systemd; refuse what would split or unquote wrongly
    # instead of starting a different command line.
    if not word or any(c.isspace() or c in "\"'\\$`;" for c in word):
        raise ValueError(f"{what}: {word!r} cannot be passed through a systemd environment file")
    return word


def env_file_content(spec: ProcessSpec) -> bytes:
    """The environment file of `spec`'s unit: its variables, then ARGV."""
    lines = [f"# Written by inference-agent for {spec.name}; edits are overwritten.",
             f"# generation {spec.generation or '-'}"]
    # The variables of the process's own environment file (its secrets) come first.
    pairs = list(read_env(spec.env_file).items()) if spec.env_file is not None else []
    lines += env_lines(pairs + list(spec.env), spec.name)
    lines.append("ARGV=" + " ".join(_env_word(w, f"{spec.name} argv") for w in spec.argv))
    return ("\n".join(lines) + "\n").encode()


def memory_max(total: int | None = None) -> int:
    """MemoryMax for the model server: the machine's memory less what the agent, Envoy
    and the system need. Recomputed at every (re)start, so it follows a vertical scale."""
    total = total if total is not None else psutil.virtual_memory().total
    return max(total - MEMORY_RESERVE, total // 2)


@dataclass
class UnitState:
    """What status shows about one unit."""

    unit: str
    active: str = "unknown"
    pid: int | None = None
    restarts: int = 0

    @property
    def running(self) -> bool:
        return self.active in ("active", "reloading", "activating")


class SystemdUnits:
    """The process manager of systemd mode: the Supervisor's interface (ensure,
    restart, stop, stop_all, pid, status) carried out with systemctl."""

    def __init__(self, env_dir: Path, systemctl: str = "systemctl"):
        self.env_dir = env_dir
        self.systemctl = systemctl
        self._specs: dict[str, ProcessSpec] = {}
        self._units: dict[str, UnitState] = {}

    async def _systemctl(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            self.systemctl, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        try:
            async with asyncio.timeout(SYSTEMCTL_TIMEOUT):
                out, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise OSError(f"systemctl {' '.join(args)}: no answer within {SYSTEMCTL_TIMEOUT}s") from None
        if proc.returncode != 0 and args[0] != "show":
            raise OSError(f"systemctl {' '.join(args)} failed ({proc.returncode}): {err.decode(errors='replace').strip()}")
        return out.decode(errors="replace")

    async def refresh(self, name: str) -> UnitState:
        """Ask systemd about the unit of process `name`."""
        unit = self._units[name].unit
        out = await self._systemctl("show", unit, "--property=ActiveState,MainPID,NRestarts")
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        pid = int(props.get("MainPID") or 0)
        state = UnitState(unit, props.get("ActiveState", "unknown"), pid or None, int(props.get("NRestarts") or 0))
        self._units[name] = state
        return state

    async def ensure(self, specs: list[ProcessSpec]) -> None:
        """Write each unit's environment file; (re)start units whose file changed or that
        are not running; stop the units of processes no longer wanted."""
        wanted = {s.name: s for s in specs}
        for name in list(self._specs):
            if name not in wanted or unit_for(wanted[name]) != self._units[name].unit:
                await self.stop(name)
        files = {name: RenderedFile(self.env_dir / f"{name}.env", env_file_content(s), mode=0o600)
                 for name, s in wanted.items()}
        self.env_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.env_dir, 0o700)
        changed = {f.path for f in await replace_files(list(files.values()))}
        for name, spec in wanted.items():
            self._specs[name] = spec
            self._units.setdefault(name, UnitState(unit_for(spec)))
            state = await self.refresh(name)
            if files[name].path in changed or not state.running:
                await self._start(name, restart=state.running)

    async def _start(self, name: str, restart: bool) -> None:
        unit = self._units[name].unit
        if name == MODEL_SERVER:
            await self._systemctl("set-property", "--runtime", unit, f"MemoryMax={memory_max()}")
        logger.info("systemd.restart" if restart else "systemd.start", process=name, unit=unit)
        await self._systemctl("restart", unit)
        await self.refresh(name)

    async def restart(self, name: str) -> None:
        """Restart the unit of process `name` with its current environment file."""
        if name in self._specs:
            await self._start(name, restart=True)

    async def stop(self, name: str) -> None:
        """Stop the unit of process `name` and forget it."""
        state = self._units.pop(name, None)
        self._specs.pop(name, None)
        if state:
            logger.info("systemd.stop", process=name, unit=state.unit)
            await self._systemctl("stop", state.unit)

    async def stop_all(self) -> None:
        """Nothing: on an agent shutdown the units keep serving (systemd runs them); the
        platform's `stop` stops them one by one through `stop`."""

    def pid(self, name: str) -> int | None:
        """Main pid of the unit of `name` as last seen, or None when it is not running."""
        state = self._units.get(name)
        return state.pid if state and state.running else None

    def status(self) -> dict[str, dict]:
        """State of each unit as last seen, JSON-ready."""
        return {name: {"unit": s.unit, "active": s.active, "running": s.running, "pid": s.pid, "restarts": s.restarts}
                for name, s in self._units.items()}
