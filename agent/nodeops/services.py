"""The platform's stop and start of this node's services.

Held stopped: between the platform's `stop` and `start` the node's services stay down,
even across an agent restart and metadata changes (a marker file in the state dir)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import aiohttp

from agent import log
from agent.nodeops.drain import DRAIN_TIMEOUT, Drainer, wait_until
from agent.nodeops.view import NodeView
from agent.processes.held import NodeProcesses
from agent.processes.names import ENVOY, MODEL_SERVER

logger = log.get(__name__)

STOPPED_MARKER = "services-stopped.json"
ENVOY_DRAIN_SECONDS = 5.0


class Hold:
    """Whether the node's services are held stopped; kept in a marker file, so it
    outlives the agent."""

    def __init__(self, state_dir: Path):
        self._marker = state_dir / STOPPED_MARKER
        self.stopped = self._marker.exists()

    def set(self, stopped: bool) -> None:
        """Hold the services stopped (True) or release them (False)."""
        self.stopped = stopped
        if stopped:
            self._marker.parent.mkdir(parents=True, exist_ok=True)
            self._marker.write_text(json.dumps({"since": time.time()}))
        else:
            self._marker.unlink(missing_ok=True)


class Services:
    """Stop and start this node's services for the platform."""

    def __init__(self, view: NodeView, hold: Hold, drainer: Drainer, processes: NodeProcesses | None):
        self.view = view
        self.hold = hold
        self.drainer = drainer
        self.processes = processes

    async def stop_services(self, drain_timeout: float = DRAIN_TIMEOUT) -> dict:
        """The platform's stop: drain, stop the model server, let Envoy's clients move
        away, stop Envoy; the services stay down until `start_services`."""
        self.hold.set(True)
        processes = self.processes
        result: dict = {"drain": None, "stopped": []}
        if processes is None:
            return result
        async with processes.lock:
            await self._stop_processes(processes, drain_timeout, result)
        self.drainer.draining = False
        logger.info("node.services_stopped", **result)
        return result

    async def _stop_processes(self, processes: NodeProcesses, drain_timeout: float, result: dict) -> None:
        if processes.pid(MODEL_SERVER) is not None:
            result["drain"] = asdict(await self.drainer.drain(drain_timeout))
            await processes.stop(MODEL_SERVER)
            result["stopped"].append(MODEL_SERVER)
        if processes.pid(ENVOY) is not None:
            # Clients of this node's listeners are told to go away (HTTP/1 Connection:
            # close, HTTP/2 GOAWAY) while the listeners still answer.
            if await self.drainer.admin_post("/drain_listeners?graceful&inboundonly"):
                await wait_until(self._no_client_connections, time.monotonic() + ENVOY_DRAIN_SECONDS)
            await processes.stop(ENVOY)
            result["stopped"].append(ENVOY)
        for name in processes.running_names():
            await processes.stop(name)
            result["stopped"].append(name)

    async def _no_client_connections(self) -> bool:
        admin = self.view.admin()
        if admin is None:
            return True
        try:
            stats = await admin.stats(r"^http\.(rest|grpc)\.downstream_cx_active$")
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return True  # Envoy is gone: nothing left to drain
        return sum(stats.values()) == 0

    async def start_services(self) -> None:
        """The platform's start: bring the services the plan wants back up."""
        self.hold.set(False)
        self.drainer.draining = False
        if self.processes is not None:
            await self.processes.resume()
        logger.info("node.services_started")
