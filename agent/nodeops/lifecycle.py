"""The platform's lifecycle on this node: drain, stop and start the node's services,
and the checks behind the scale hooks. The control API (agent/nodeops/control.py) calls it;
the hooks (agent/commands/hook.py) turn its answers into exit codes.

Draining. Every Envoy health-checks each serving node through that node's own Envoy
(its health listener, which passes the check on to the local model server). Draining
puts this node's Envoy into health-check-failure mode (admin `POST /healthcheck/fail`):
every Envoy in the cluster, this one included, then marks this node unhealthy and sends
it no new request. The agent waits until its own Envoy sees that, lets the other
Envoys' checks catch up, waits for the requests still in flight to this node's model
server to finish (bounded), and only then stops or restarts the model server.

Held stopped. Between the platform's `stop` and `start` the node's services stay down,
even across an agent restart and metadata changes (a marker file in the state dir).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Awaitable, Callable

import aiohttp

from agent import log
from agent.clients.upstreams import EnvoyCluster, EnvoyView, envoy_clusters
from agent.nodeops.health import metadata_problem
from agent.pipeline.plan import ENVOY, MODEL_SERVER
from agent.pipeline.reconcile import model_available
from agent.state import ClusterState, Role
from agent.processes.supervisor import ProcessSpec

if TYPE_CHECKING:
    from agent.daemon import Agent

logger = log.get(__name__)

STOPPED_MARKER = "services-stopped.json"
# Every Envoy checks every second and needs two failures (templates/envoy/cds.yaml.j2):
# this node's own Envoy notices a drain within about 3 s; the others run the same
# checks on their own clocks, so one more interval covers them.
DETECT_TIMEOUT = 5.0
PEER_MARGIN = 1.5
POLL = 0.1
DRAIN_TIMEOUT = 30.0
# Envoy states the agent did not ask for, found through its admin API.
DRIFT_HEALTHCHECK_FAILED = "Envoy fails its health checks (admin /healthcheck/fail) though the agent is not draining"
DRIFT_LISTENERS_DRAINED = "Envoy's listeners were drained (admin /drain_listeners)"
# How often the agent looks for drift and restores what the metadata says.
DRIFT_INTERVAL = 3.0
# A model server restart for a changed command line (vertical scaling) waits its turn:
# the n-th serving node by sid first waits n * TURN seconds, then until every other
# serving node is healthy, so the nodes of a cluster never all restart at once.
TURN = 3.0
TURN_MAX_WAIT = 120.0
ENVOY_DRAIN_SECONDS = 5.0


class Refusal(IntEnum):
    """Why a scale hook refuses; the value is its exit code (docs/hooks.md)."""

    LAST_SERVING_NODE = 11
    NO_HEALTHY_REMAINING = 12
    METADATA_NOT_APPLIED = 13
    ADDED_NODE_NOT_SERVING = 14
    LEAVING_NODE_STILL_ROUTED = 15


@dataclass(frozen=True)
class Verdict:
    """The answer of a scale check: code 0 (go ahead) or a Refusal, with the reason."""

    code: int
    message: str

    @property
    def ok(self) -> bool:
        return self.code == 0


@dataclass(frozen=True)
class DrainResult:
    """How a drain went."""

    seconds: float
    detected: bool  # this node's Envoy saw the node fail its health check
    in_flight: int  # requests still in flight when the drain ended (0 unless it timed out)


def _cluster(view: EnvoyView, name: str) -> EnvoyCluster | None:
    return next((c for c in view.clusters if c.name == name), None)


class Lifecycle:
    """Lifecycle operations on one agent's node. One per agent."""

    def __init__(self, agent: "Agent"):
        self.agent = agent
        self.draining = False
        self._marker = agent.paths.state / STOPPED_MARKER
        self.stopped = self._marker.exists()
        self.processes: NodeProcesses | None = None
        # How this node's Envoy was last found to differ from what the agent set
        # (a drain or health-check failure done through its admin port by someone else).
        self.drift: tuple[str, ...] = ()

    # --- views -------------------------------------------------------------------

    @property
    def state(self) -> ClusterState | None:
        """The cluster state in force."""
        return self.agent.reconciler.state

    def status(self) -> dict:
        """What status shows about the lifecycle."""
        drift = {"envoy_drift": list(self.drift)} if self.drift else {}  # shown only when there is some
        return {"stopped": self.stopped, "draining": self.draining, **drift}

    def admin_url(self) -> str | None:
        """Base URL of this node's Envoy admin API, once a state is in force."""
        state = self.state
        return self.agent.reconciler.admin(state).base_url if state else None

    async def envoy_view(self) -> EnvoyView:
        """This node's Envoy's clusters and hosts with their health."""
        url = self.admin_url()
        if url is None:
            return EnvoyView(reachable=False, error="no metadata applied yet")
        async with aiohttp.ClientSession() as session:
            return await envoy_clusters(session, url)

    async def _admin_post(self, path: str) -> bool:
        url = self.admin_url()
        if url is None:
            return False
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
                async with s.post(f"{url}{path}") as resp:
                    return resp.status == 200
        except (aiohttp.ClientError, TimeoutError) as e:
            logger.warning("envoy.admin_unreachable", path=path, error=str(e) or type(e).__name__)
            return False

    async def _own_hosts(self) -> dict[str, dict]:
        """This node's model server as each of this Envoy's serving clusters sees it."""
        state = self.state
        view = await self.envoy_view()
        out = {}
        for name in ("serving_rest", "serving_grpc"):
            cluster = _cluster(view, name)
            host = next((h for h in cluster.hosts if h.address == state.me.ip), None) if cluster and state else None
            if host:
                out[name] = {"health": host.health, "rq_active": host.stats.get("rq_active", 0)}
        return out

    # --- Envoy admin drift ----------------------------------------------------------

    async def envoy_drift(self) -> tuple[str, ...]:
        """Check this node's Envoy against what the agent set; remembers and returns the differences."""
        state = self.state
        if state is None or self.stopped or self.draining:
            self.drift = ()
            return self.drift
        admin = self.agent.reconciler.admin(state)
        try:
            server_state = await admin.server_state()
            stats = await admin.stats(r"^listener_manager\.listener_stopped$")
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return self.drift  # Envoy down is health's business (restart), not drift
        drift = []
        if server_state == "DRAINING" and not self.draining:
            drift.append(DRIFT_HEALTHCHECK_FAILED)
        if stats.get("listener_manager.listener_stopped", 0) > 0:
            drift.append(DRIFT_LISTENERS_DRAINED)
        self.drift = tuple(drift)
        return self.drift

    async def restore_envoy(self, drift: tuple[str, ...]) -> list[str]:
        """Undo drift: health checks passing again, drained listeners back (an Envoy restart)."""
        done = []
        if DRIFT_HEALTHCHECK_FAILED in drift and not self.draining and await self._admin_post("/healthcheck/ok"):
            done.append("healthcheck/ok")
        if DRIFT_LISTENERS_DRAINED in drift and self.processes is not None and not self.stopped:
            await self.processes.restart(ENVOY)
            done.append("restart envoy")
        if done:
            logger.warning("envoy.drift_restored", drift=list(drift), actions=done)
        return done

    # --- drain ---------------------------------------------------------------------

    async def drain(self, timeout: float = DRAIN_TIMEOUT) -> DrainResult:
        """Make every Envoy stop sending this node new requests, then wait (up to
        `timeout`) for the ones in flight to its model server to finish."""
        started = time.monotonic()
        deadline = started + timeout
        self.draining = True
        await self._admin_post("/healthcheck/fail")
        detected = await _wait_until(self._own_failing, min(deadline, started + DETECT_TIMEOUT))
        if detected:
            await asyncio.sleep(max(0.0, min(PEER_MARGIN, deadline - time.monotonic())))
        in_flight = 0
        quiet = 0
        while time.monotonic() < deadline:
            hosts = await self._own_hosts()
            in_flight = sum(h["rq_active"] for h in hosts.values())
            quiet = quiet + 1 if in_flight == 0 else 0
            if quiet >= 2:
                break
            await asyncio.sleep(POLL)
        result = DrainResult(round(time.monotonic() - started, 3), detected, in_flight)
        logger.info("node.drained", **asdict(result))
        return result

    async def _own_failing(self) -> bool:
        hosts = await self._own_hosts()
        return bool(hosts) and all(h["health"] != "healthy" for h in hosts.values())

    async def undrain(self) -> None:
        """Let health checks of this node pass again."""
        self.draining = False
        await self._admin_post("/healthcheck/ok")

    async def before_model_server_restart(self) -> None:
        """Wait for this node's turn, then drain it: the model server restarts only
        while no request is sent to it and the other serving nodes carry the traffic."""
        state = self.state
        if state is None or state.me.role is not Role.MODEL_SERVING:
            return
        others = [n for n in state.active_serving_nodes if n.instance_id != state.me.instance_id]
        if others:
            ids = [n.instance_id for n in state.active_serving_nodes]
            rank = ids.index(state.me.instance_id) if state.me.instance_id in ids else 0
            await asyncio.sleep(rank * TURN)
            ips = {n.ip for n in others}
            healthy = await _wait_until(lambda: self._all_healthy(ips), time.monotonic() + TURN_MAX_WAIT)
            if not healthy:
                logger.warning("model_server.restart_without_turn", waited=TURN_MAX_WAIT)
        await self.drain()

    async def _all_healthy(self, ips: set[str]) -> bool:
        cluster = _cluster(await self.envoy_view(), "serving_rest")
        healthy = {h.address for h in cluster.hosts if h.health == "healthy"} if cluster else set()
        return ips <= healthy

    # --- stop / start ----------------------------------------------------------------

    def _hold(self, stopped: bool) -> None:
        self.stopped = stopped
        if stopped:
            self._marker.parent.mkdir(parents=True, exist_ok=True)
            self._marker.write_text(json.dumps({"since": time.time()}))
        else:
            self._marker.unlink(missing_ok=True)

    async def stop_services(self, drain_timeout: float = DRAIN_TIMEOUT) -> dict:
        """The platform's stop: drain, stop the model server, let Envoy's clients move
        away, stop Envoy; the services stay down until `start_services`."""
        self._hold(True)
        processes = self.processes
        result: dict = {"drain": None, "stopped": []}
        if processes is None:
            return result
        async with processes.lock:
            await self._stop_processes(processes, drain_timeout, result)
        self.draining = False
        logger.info("node.services_stopped", **result)
        return result

    async def _stop_processes(self, processes: "NodeProcesses", drain_timeout: float, result: dict) -> None:
        if processes.pid(MODEL_SERVER) is not None:
            result["drain"] = asdict(await self.drain(drain_timeout))
            await processes.stop(MODEL_SERVER)
            result["stopped"].append(MODEL_SERVER)
        if processes.pid(ENVOY) is not None:
            # Clients of this node's listeners are told to go away (HTTP/1 Connection:
            # close, HTTP/2 GOAWAY) while the listeners still answer.
            if await self._admin_post("/drain_listeners?graceful&inboundonly"):
                await _wait_until(self._no_client_connections, time.monotonic() + ENVOY_DRAIN_SECONDS)
            await processes.stop(ENVOY)
            result["stopped"].append(ENVOY)
        for name in processes.running_names():
            await processes.stop(name)
            result["stopped"].append(name)

    async def _no_client_connections(self) -> bool:
        if self.state is None:
            return True
        try:
            stats = await self.agent.reconciler.admin(self.state).stats(r"^http\.(rest|grpc)\.downstream_cx_active$")
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return True  # Envoy is gone: nothing left to drain
        return sum(stats.values()) == 0

    async def start_services(self) -> None:
        """The platform's start: bring the services the plan wants back up."""
        self._hold(False)
        self.draining = False
        if self.processes is not None:
            await self.processes.resume()
        logger.info("node.services_started")

    # --- scaling -------------------------------------------------------------------

    async def wait_applied(self, timeout: float) -> Verdict:
        """Bring the agent up to date with its source (a fresh read, applied), so the
        answer is for the metadata the platform wrote before calling the hook."""
        problem = await self.agent.catch_up(timeout)
        if problem is None:
            problem = metadata_problem(self.agent)
        if problem is None:
            return Verdict(0, "metadata applied")
        return Verdict(Refusal.METADATA_NOT_APPLIED, f"this node: {problem}")

    async def scale_in_check(self, timeout: float = 10.0) -> Verdict:
        """The scale-in pre-check: refuse to remove every serving node, or to remove
        nodes when no remaining serving node serves model.name."""
        verdict = await self.wait_applied(timeout)
        if not verdict.ok:
            return verdict
        state = self.state
        serving = {n.instance_id for n in state.serving_nodes}
        leaving = sorted(serving & state.deleting)
        if not leaving:
            return Verdict(0, "no serving node is being removed")
        remaining = state.active_serving_nodes
        if not remaining:
            return Verdict(Refusal.LAST_SERVING_NODE,
                           f"removing {', '.join(leaving)} would leave no serving node; keep at least one")
        name = state.params.model_name
        available = await asyncio.gather(*(model_available(n.ip, name) for n in remaining))
        if not any(available):
            return Verdict(Refusal.NO_HEALTHY_REMAINING,
                           f"no remaining serving node ({', '.join(n.instance_id for n in remaining)}) serves {name}; "
                           "removing nodes now would stop the service")
        return Verdict(0, f"{len(remaining)} serving node(s) remain, {sum(available)} serving {name}")

    async def scale_in(self, timeout: float) -> Verdict:
        """The scale-in service on a remaining node: the pre-check's rules again, then
        wait until this node's Envoy sends nothing more to the leaving nodes."""
        deadline = time.monotonic() + timeout
        verdict = await self.scale_in_check(timeout)
        if not verdict.ok:
            return verdict
        state = self.state
        leaving = {n.ip for n in state.serving_nodes if n.instance_id in state.deleting}
        if not leaving:
            return verdict
        if await _wait_until(lambda: self._routes_none_of(leaving), deadline):
            return Verdict(0, f"this node no longer routes to {', '.join(sorted(leaving))}")
        return Verdict(Refusal.LEAVING_NODE_STILL_ROUTED,
                       f"this node's Envoy still routes to {', '.join(sorted(leaving))} after {timeout:.0f}s")

    async def _routes_none_of(self, ips: set[str]) -> bool:
        view = await self.envoy_view()
        if not view.reachable:
            return False
        return not any(h.address in ips for c in view.clusters for h in c.hosts)

    async def scale_out(self, timeout: float) -> Verdict:
        """The scale-out service on an existing node: wait until this node's Envoy has
        every added serving node and finds it serving model.name."""
        deadline = time.monotonic() + timeout
        verdict = await self.wait_applied(timeout)
        if not verdict.ok:
            return verdict
        state = self.state
        added = {n.ip: n.instance_id for n in state.active_serving_nodes if n.instance_id in state.adding}
        if not added:
            return Verdict(0, "no serving node was added")
        if await _wait_until(lambda: self._all_healthy(set(added)), deadline):
            return Verdict(0, f"added node(s) {', '.join(sorted(added.values()))} serve {state.params.model_name}")
        return Verdict(Refusal.ADDED_NODE_NOT_SERVING,
                       f"added node(s) {', '.join(sorted(added.values()))} did not serve {state.params.model_name} "
                       f"within {timeout:.0f}s")


async def _wait_until(condition: Callable[[], bool | Awaitable[bool]], deadline: float, interval: float = 0.2) -> bool:
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


class NodeProcesses:
    """The agent's process manager (Supervisor, or SystemdUnits in systemd mode) as the
    lifecycle needs it: nothing starts while the node is held stopped, and the model
    server is drained before it restarts for a changed command line."""

    def __init__(self, inner, lifecycle: Lifecycle):
        self.inner = inner
        self.lifecycle = lifecycle
        self._wanted: list[ProcessSpec] = []
        self._running: dict[str, ProcessSpec] = {}
        # One change of the running set at a time: the reconciler's, stop/start, a repair.
        self.lock = asyncio.Lock()

    async def ensure(self, specs: list[ProcessSpec]) -> None:
        """Make the running set match `specs`, unless the node is held stopped; the
        model server is drained first when its command line changed."""
        self._wanted = list(specs)
        if self.lifecycle.stopped:
            return
        old = self._running.get(MODEL_SERVER)
        new = next((s for s in specs if s.name == MODEL_SERVER), None)
        restart = old is not None and new is not None and old != new
        if restart:
            logger.info("model_server.restart_after_drain", old=list(old.argv), new=list(new.argv))
            # Outside the lock: waiting for this node's turn must not hold up a stop.
            await self.lifecycle.before_model_server_restart()
        try:
            async with self.lock:
                if not self.lifecycle.stopped:
                    await self._apply(specs)
        finally:
            if restart and not self.lifecycle.stopped:
                await self.lifecycle.undrain()

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
