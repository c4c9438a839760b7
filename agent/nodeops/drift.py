"""Envoy admin drift: a drain or health-check failure someone did through Envoy's admin
port (not the agent) shows in status and health, and is undone, so the node serves as
its metadata says."""

from __future__ import annotations

import asyncio

import aiohttp

from agent import log
from agent.nodeops.drain import Drainer
from agent.nodeops.services import Hold
from agent.nodeops.view import NodeView
from agent.processes.held import NodeProcesses
from agent.processes.names import ENVOY

logger = log.get(__name__)

# Envoy states the agent did not ask for, found through its admin API.
DRIFT_HEALTHCHECK_FAILED = "Envoy fails its health checks (admin /healthcheck/fail) though the agent is not draining"
DRIFT_LISTENERS_DRAINED = "Envoy's listeners were drained (admin /drain_listeners)"
# How often the agent looks for drift and restores what the metadata says.
DRIFT_INTERVAL = 3.0


class EnvoyDrift:
    """How this node's Envoy was last found to differ from what the agent set, and its undoing."""

    def __init__(self, view: NodeView, hold: Hold, drainer: Drainer, processes: NodeProcesses | None):
        self.view = view
        self.hold = hold
        self.drainer = drainer
        self.processes = processes
        self.drift: tuple[str, ...] = ()

    async def check(self) -> tuple[str, ...]:
        """Check this node's Envoy against what the agent set; remembers and returns the differences."""
        admin = self.view.admin()
        if admin is None or self.hold.stopped or self.drainer.draining:
            self.drift = ()
            return self.drift
        try:
            server_state = await admin.server_state()
            stats = await admin.stats(r"^listener_manager\.listener_stopped$")
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return self.drift  # Envoy down is health's business (restart), not drift
        drift = []
        if server_state == "DRAINING" and not self.drainer.draining:
            drift.append(DRIFT_HEALTHCHECK_FAILED)
        if stats.get("listener_manager.listener_stopped", 0) > 0:
            drift.append(DRIFT_LISTENERS_DRAINED)
        self.drift = tuple(drift)
        return self.drift

    async def restore(self, drift: tuple[str, ...]) -> list[str]:
        """Undo drift: health checks passing again, drained listeners back (an Envoy restart)."""
        done = []
        if DRIFT_HEALTHCHECK_FAILED in drift and not self.drainer.draining and await self.drainer.admin_post("/healthcheck/ok"):
            done.append("healthcheck/ok")
        if DRIFT_LISTENERS_DRAINED in drift and self.processes is not None and not self.hold.stopped:
            await self.processes.restart(ENVOY)
            done.append("restart envoy")
        if done:
            logger.warning("envoy.drift_restored", drift=list(drift), actions=done)
        return done

    async def run(self) -> None:
        """Look for drift every DRIFT_INTERVAL seconds and undo it, until cancelled."""
        while True:
            await asyncio.sleep(DRIFT_INTERVAL)
            if self.processes is None:
                continue
            try:
                drift = await self.check()
                if drift:
                    logger.warning("envoy.drift", drift=list(drift))
                    await self.restore(drift)
            except Exception:
                logger.exception("envoy.drift_check_failed")
