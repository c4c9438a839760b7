"""Draining this node: every Envoy stops sending it new requests, then the requests in
flight to its model server finish.

Every Envoy health-checks each serving node through that node's own Envoy (its health
listener, which passes the check on to the local model server). Draining puts this
node's Envoy into health-check-failure mode (admin `POST /healthcheck/fail`): every
Envoy in the cluster, this one included, then marks this node unhealthy and sends it no
new request. The drain waits until its own Envoy sees that, lets the other Envoys'
checks catch up, waits for the requests still in flight to this node's model server to
finish (bounded), and only then does the caller stop or restart the model server.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from dataclasses import asdict, dataclass
from typing import Awaitable, Callable

from agent import log
from agent.clients.envoy_admin import EnvoyCluster, EnvoyView
from agent.nodeops.view import NodeView
from agent.ports import SERVING_CLUSTERS, serving_cluster
from agent.state import Role

logger = log.get(__name__)

# Every Envoy checks every second and needs two failures (templates/envoy/cds.yaml.j2):
# this node's own Envoy notices a drain within about 3 s; the others run the same
# checks on their own clocks, so one more interval covers them.
DETECT_TIMEOUT = 5.0
PEER_MARGIN = 1.5
POLL = 0.1
DRAIN_TIMEOUT = 30.0
# A model server restart for a changed command line (vertical scaling) waits its turn:
# the n-th serving node by sid first waits n * TURN seconds, then until every other
# serving node is healthy, so the nodes of a cluster never all restart at once.
TURN = 3.0
TURN_MAX_WAIT = 120.0


@dataclass(frozen=True)
class DrainResult:
    """How a drain went."""

    seconds: float
    detected: bool  # this node's Envoy saw the node fail its health check
    in_flight: int  # requests still in flight when the drain ended (0 unless it timed out)


def find_cluster(view: EnvoyView, name: str) -> EnvoyCluster | None:
    """The cluster called `name` in an Envoy view, or None."""
    return next((c for c in view.clusters if c.name == name), None)


async def wait_until(condition: Callable[[], bool | Awaitable[bool]], deadline: float, interval: float = 0.2) -> bool:
    """Poll `condition` (plain or async) until it is true (True) or the monotonic
    `deadline` passes (False)."""
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


class Drainer:
    """Drains and undrains this node; `draining` is true from a drain until undrain."""

    def __init__(self, view: NodeView):
        self.view = view
        self.draining = False

    async def admin_post(self, path: str) -> bool:
        """An admin command to this node's Envoy; False when there is no state yet or Envoy did not take it."""
        admin = self.view.admin()
        return await admin.post(path) if admin is not None else False

    async def own_hosts(self) -> dict[str, dict]:
        """This node's model server as each of this Envoy's serving clusters sees it."""
        state = self.view.state()
        envoy = await self.view.envoy_view()
        out = {}
        for name in SERVING_CLUSTERS:
            cluster = find_cluster(envoy, name)
            host = next((h for h in cluster.hosts if h.address == state.me.ip), None) if cluster and state else None
            if host:
                out[name] = {"health": host.health, "rq_active": host.stats.get("rq_active", 0)}
        return out

    async def drain(self, timeout: float = DRAIN_TIMEOUT) -> DrainResult:
        """Make every Envoy stop sending this node new requests, then wait (up to
        `timeout`) for the ones in flight to its model server to finish."""
        started = time.monotonic()
        deadline = started + timeout
        self.draining = True
        await self.admin_post("/healthcheck/fail")
        detected = await wait_until(self._own_failing, min(deadline, started + DETECT_TIMEOUT))
        if detected:
            await asyncio.sleep(max(0.0, min(PEER_MARGIN, deadline - time.monotonic())))
        in_flight = 0
        quiet = 0
        while time.monotonic() < deadline:
            hosts = await self.own_hosts()
            in_flight = sum(h["rq_active"] for h in hosts.values())
            quiet = quiet + 1 if in_flight == 0 else 0
            if quiet >= 2:
                break
            await asyncio.sleep(POLL)
        result = DrainResult(round(time.monotonic() - started, 3), detected, in_flight)
        logger.info("node.drained", **asdict(result))
        return result

    async def _own_failing(self) -> bool:
        hosts = await self.own_hosts()
        return bool(hosts) and all(h["health"] != "healthy" for h in hosts.values())

    async def undrain(self) -> None:
        """Let health checks of this node pass again."""
        self.draining = False
        await self.admin_post("/healthcheck/ok")

    async def before_model_server_restart(self) -> None:
        """Wait for this node's turn, then drain it: the model server restarts only
        while no request is sent to it and the other serving nodes carry the traffic."""
        state = self.view.state()
        if state is None or state.me.role is not Role.MODEL_SERVING:
            return
        others = [n for n in state.active_serving_nodes if n.instance_id != state.me.instance_id]
        if others:
            ids = [n.instance_id for n in state.active_serving_nodes]
            rank = ids.index(state.me.instance_id) if state.me.instance_id in ids else 0
            await asyncio.sleep(rank * TURN)
            ips = {n.ip for n in others}
            healthy = await wait_until(lambda: self.all_healthy(ips), time.monotonic() + TURN_MAX_WAIT)
            if not healthy:
                logger.warning("model_server.restart_without_turn", waited=TURN_MAX_WAIT)
        await self.drain()

    async def all_healthy(self, ips: set[str]) -> bool:
        """True when this node's Envoy finds every node at `ips` healthy (REST cluster)."""
        cluster = find_cluster(await self.view.envoy_view(), serving_cluster("rest"))
        healthy = {h.address for h in cluster.hosts if h.health == "healthy"} if cluster else set()
        return ips <= healthy
