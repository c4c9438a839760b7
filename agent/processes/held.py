"""The node's processes as node operations need them: nothing starts while the node is
held stopped, and the model server is drained before it restarts for a changed command
line. Wraps the process manager in force (Supervisor, or SystemdUnits in systemd mode)."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from agent import log
from agent.processes.names import MODEL_SERVER
from agent.processes.supervisor import ProcessManager, ProcessSpec

logger = log.get(__name__)


class NodeProcesses:
    """The running set, one change at a time. `held` says whether the node is held
    stopped; `before_restart`/`after_restart` drain the node around a model server
    restart for a changed command line."""

    def __init__(self, inner: ProcessManager, held: Callable[[], bool],
                 before_restart: Callable[[], Awaitable[None]], after_restart: Callable[[], Awaitable[None]]):
        self.inner = inner
        self._held = held
        self._before_restart = before_restart
        self._after_restart = after_restart
        self._wanted: list[ProcessSpec] = []
        self._running: dict[str, ProcessSpec] = {}
        # One change of the running set at a time: the reconciler's, stop/start, a repair.
        self.lock = asyncio.Lock()

    async def ensure(self, specs: list[ProcessSpec]) -> None:
        """Make the running set match `specs`, unless the node is held stopped; the
        model server is drained first when its command line changed."""
        self._wanted = list(specs)
        if self._held():
            return
        old = self._running.get(MODEL_SERVER)
        new = next((s for s in specs if s.name == MODEL_SERVER), None)
        restart = old is not None and new is not None and old != new
        if restart:
            logger.info("model_server.restart_after_drain", old=list(old.argv), new=list(new.argv))
            # Outside the lock: waiting for this node's turn must not hold up a stop.
            await self._before_restart()
        try:
            async with self.lock:
                if not self._held():
                    await self._apply(specs)
        finally:
            if restart and not self._held():
                await self._after_restart()

    async def resume(self) -> None:
        """Start what the last plan wanted (after the node was held stopped)."""
        async with self.lock:
            await self._apply(self._wanted)

    async def _apply(self, specs: list[ProcessSpec]) -> None:
        await self.inner.ensure(specs)
        self._running = {s.name: s for s in specs}

    def running_names(self) -> list[str]:
        """Names of the processes last started."""
        return list(self._running)

    async def restart(self, name: str) -> None:
        """Restart one process (health-action)."""
        async with self.lock:
            await self.inner.restart(name)

    async def stop(self, name: str) -> None:
        """Stop one process; the caller holds `lock`."""
        self._running.pop(name, None)
        await self.inner.stop(name)

    async def stop_all(self) -> None:
        """Stop every process (agent shutdown)."""
        await self.inner.stop_all()

    def pid(self, name: str) -> int | None:
        """Pid of a running process, or None."""
        return self.inner.pid(name)

    def status(self) -> dict[str, dict]:
        """Processes' status, JSON-ready."""
        return self.inner.status()
