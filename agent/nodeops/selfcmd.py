"""Lifecycle commands the platform sends through `/self/cmd`: each id runs once.

The platform's `exec.sh` ran `cmd` with the shell whenever `/self/cmd/id` changed and
logged to `cmd.log` lines that the platform's tools parse:

    YYYY-mm-dd HH:MM:SS <id> [executing]: <cmd>
    YYYY-mm-dd HH:MM:SS <id> [successful]: <cmd>      (or [failed<rc>])

with the command's output appended to `app.log`. The runner keeps that format and adds
what exec.sh lacked: the timeout is enforced (the command runs in its own process group,
which is terminated, then killed), commands arriving while one runs wait their turn, and
the ids already finished are remembered across agent restarts. A command interrupted by
the agent stopping is not finished: it runs again when the agent comes back.

Service parameters: the platform appends the service's params JSON, quoted, as the last
argument of `cmd` itself; `/bin/sh -c` hands it to the program as one argument.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import tempfile
import time
from pathlib import Path

import agent.log
from agent.metrics import Metrics
from agent.state import Command

log = agent.log.get(__name__)

STATE_FILE = "lifecycle-commands.json"
# How long a timed-out command may take to exit after SIGTERM before SIGKILL.
KILL_GRACE = 3.0
# Exit status reported for a command killed at its timeout (as coreutils `timeout` does).
TIMEOUT_RC = 124
# Finished ids remembered: enough to ignore any id the platform might show again.
REMEMBERED_IDS = 100


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())


def _exit_code(returncode: int) -> int:
    """A shell-style status: 128+N for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


class CommandRunner:
    """Runs `/self/cmd` commands one at a time, each id once, logging as the platform does."""

    def __init__(self, logs_dir: Path, state_dir: Path, metrics: Metrics, kill_grace: float = KILL_GRACE):
        self.cmd_log = Path(logs_dir) / "cmd.log"
        self.app_log = Path(logs_dir) / "app.log"
        self.state_file = Path(state_dir) / STATE_FILE
        self.metrics = metrics
        self.kill_grace = kill_grace
        self._finished: collections.deque[str] = collections.deque(maxlen=REMEMBERED_IDS)
        self._queue: collections.deque[Command] = collections.deque()
        self._wake = asyncio.Event()
        self.running: Command | None = None
        self._load()

    @property
    def last_finished_id(self) -> str | None:
        """The id of the command that finished last (successful, failed or timed out)."""
        return self._finished[-1] if self._finished else None

    def _load(self) -> None:
        try:
            record = json.loads(self.state_file.read_text())
            self._finished.extend(str(i) for i in record.get("finished", []))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError) as e:
            log.error("lifecycle command state unreadable; finished ids forgotten",
                      path=str(self.state_file), error=str(e))

    def _save(self) -> None:
        """Persist the finished ids (atomic, 0600); a failure is logged, the agent goes on."""
        data = json.dumps({"last_finished_id": self.last_finished_id, "finished": list(self._finished)})
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.state_file.name}.", dir=self.state_file.parent)
            with os.fdopen(fd, "w") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_file)
        except OSError as e:
            log.error("cannot remember finished lifecycle commands", path=str(self.state_file), error=str(e))

    def submit(self, cmd: Command | None) -> None:
        """Queue `cmd` if its id is new: not finished, not running, not queued."""
        if cmd is None or not cmd.id:
            return
        if cmd.id in self._finished or (self.running and self.running.id == cmd.id):
            return
        if any(queued.id == cmd.id for queued in self._queue):
            return
        log.info("lifecycle command queued", id=cmd.id, timeout=cmd.timeout)
        self._queue.append(cmd)
        self._wake.set()

    def _log_line(self, cmd: Command, state: str) -> None:
        # The command text goes to cmd.log only (the platform's format needs it); the
        # agent's own log names the id, as the text may carry service params.
        self.cmd_log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.cmd_log, "a", encoding="utf-8") as f:
            f.write(f"{_now()} {cmd.id} [{state}]: {cmd.cmd}\n")

    async def run(self) -> None:
        """Run queued commands in order until cancelled (a running one is then killed)."""
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            cmd = self._queue.popleft()
            self.running = cmd
            try:
                await self._execute(cmd)
            except Exception as e:  # one broken command (unwritable log, no /bin/sh) must not stop the agent
                log.error("lifecycle command could not run", id=cmd.id, error=str(e) or type(e).__name__)
                self._finished.append(cmd.id)  # retrying it on every snapshot would fail the same way
                self._save()
            finally:
                self.running = None

    async def _execute(self, cmd: Command) -> None:
        self._log_line(cmd, "executing")
        log.info("lifecycle command started", id=cmd.id, timeout=cmd.timeout)
        started = time.monotonic()
        self.app_log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.app_log, "ab") as output:
            # Output goes straight to the file: no pipe for a background child to hold open.
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", cmd.cmd,
                stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output,
                start_new_session=True,
            )
        try:
            async with asyncio.timeout(cmd.timeout):
                returncode = await proc.wait()
            rc = _exit_code(returncode)
            timed_out = False
        except TimeoutError:
            log.warning("lifecycle command timed out; killing its process group",
                        id=cmd.id, timeout=cmd.timeout)
            await self._kill_group(proc, self.kill_grace)
            rc, timed_out = TIMEOUT_RC, True
        except asyncio.CancelledError:
            await asyncio.shield(self._kill_group(proc, 0))
            self._log_line(cmd, f"failed{_exit_code(proc.returncode)}")
            log.warning("lifecycle command interrupted by agent shutdown; it runs again at next start",
                        id=cmd.id)
            raise
        result = "successful" if rc == 0 else f"failed{rc}"
        self._log_line(cmd, result)
        self._finished.append(cmd.id)
        self._save()
        self.metrics.commands.labels(result="timeout" if timed_out else ("successful" if rc == 0 else "failed")).inc()
        log.info("lifecycle command finished", id=cmd.id, result=result,
                 seconds=round(time.monotonic() - started, 3))

    @staticmethod
    async def _kill_group(proc: asyncio.subprocess.Process, grace: float) -> None:
        """SIGTERM the command's whole process group, then SIGKILL what is left after `grace`."""
        pgid = proc.pid  # start_new_session: the shell leads its own group
        if grace > 0:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                async with asyncio.timeout(grace):
                    await proc.wait()
            except TimeoutError:
                pass
        try:
            os.killpg(pgid, signal.SIGKILL)  # also children that outlived the shell
        except ProcessLookupError:
            pass
        await proc.wait()
