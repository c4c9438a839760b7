"""The reconciler: snapshot -> validate -> plan -> apply. An invalid snapshot is
rejected whole and the last good state stays live; applying the same snapshot twice
changes nothing."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import asdict
from pathlib import Path

from agent import log
from agent.clients.envoy_admin import EnvoyAdmin
from agent.clients.model_server import model_state
from agent.errors import InvalidMetadata
from agent.files import Check, CheckFailed, RenderedFile, replace_files
from agent.metadata import Snapshot
from agent.metrics import Metrics
from agent.modelspec import ModelSpec
from agent.paths import Paths
from agent.pipeline.envoy import check_staged, wait_applied
from agent.pipeline.plan import NodePlan, make_plan
from agent.ports import SERVING_GRPC_PORT
from agent.processes.names import ENVOY, MODEL_SERVER
from agent.processes.supervisor import ProcessManager
from agent.state import ClusterState, Role, parse_cluster_state
from agent.status import AgentStatus, Rejection

logger = log.get(__name__)

# After an http.port/grpc.port change the old port keeps accepting this long, so
# clients can move to the new one without a refused connection; then it drains.
PORT_GRACE = 10.0
# On a model switch every node keeps the old model loaded until the new one is AVAILABLE
# on every reachable serving node, then MODEL_LINGER more seconds for clients to move;
# never longer than MODEL_SWITCH_MAX (a node that cannot load the new model).
MODEL_LINGER = 5.0
MODEL_SWITCH_MAX = 300.0
# A reload answers once the new models are loaded (ResNet takes seconds on a busy node).
RELOAD_TIMEOUT = 120.0


def models_in_config(path: Path) -> tuple[str, ...]:
    """Model names listed in an existing models.config (to resume a model switch after a restart)."""
    try:
        return tuple(re.findall(r'^\s*name:\s*"([^"]+)"', path.read_text(), re.M))
    except OSError:
        return ()


class Reconciler:
    """Applies snapshots to this node. Owned and called by the Agent, one apply at a time."""

    def __init__(self, paths: Paths, status: AgentStatus, metrics: Metrics, supervisor: ProcessManager | None):
        self.paths = paths
        self.status = status
        self.metrics = metrics
        self.supervisor = supervisor
        self.state: ClusterState | None = None
        # True while the applied state is not final yet (a model switch waiting for the
        # new model): the agent re-applies the last snapshot shortly.
        self.pending = False
        self._applied_tree: dict | None = None
        self._serving_models = tuple(ModelSpec(n) for n in models_in_config(paths.models_config))
        self._health_model: str | None = None
        self._retired: dict[tuple[str, int], float] = {}  # (kind, port) -> monotonic deadline
        self._switch_started: float | None = None
        self._switch_ready_at: float | None = None
        # The reload of the model server for the newest models.config (owned; a newer
        # config supersedes it, close() cancels it).
        self._reload: asyncio.Task | None = None

    async def close(self) -> None:
        """Cancel the background work this reconciler started."""
        if self._reload is not None:
            self._reload.cancel()
            await asyncio.gather(self._reload, return_exceptions=True)

    @property
    def serving_models(self) -> tuple[str, ...]:
        """Names of the models models.config lists now (model.name's, plus any being
        switched away from)."""
        return tuple(m.name for m in self._serving_models)

    @property
    def applied_tree(self) -> dict | None:
        """The metadata tree in force."""
        return self._applied_tree

    def reject(self, snap: Snapshot, reasons: list[str]) -> None:
        """Record a refused snapshot: logged, counted, shown in status."""
        self.status.last_rejection = Rejection(time.time(), snap.source, snap.version, reasons)
        self.metrics.rejected.inc()
        self.metrics.reconciles.labels("rejected").inc()
        logger.error("metadata.rejected", source=snap.source, version=snap.version, reasons=reasons)

    async def apply(self, snap: Snapshot) -> ClusterState | None:
        """Apply one snapshot; returns the state now in force, or None if it was rejected."""
        self.status.received_version = snap.version
        self.status.received_at = snap.received_at
        if snap.error or snap.tree is None:
            self.reject(snap, [snap.error or "no metadata"])
            return None
        if snap.tree == self._applied_tree and not self.pending:
            self._mark_applied(snap)
            return self.state
        try:
            state = parse_cluster_state(snap.tree)
        except InvalidMetadata as e:
            self.reject(snap, [str(p) for p in e.problems])
            return None
        started = time.monotonic()
        self.pending = False
        health_model = self._health_model_for(state)
        plan = make_plan(
            state, self.paths, await self._serving_models_for(state), self._retired_listeners(state), health_model,
        )
        try:
            await self._apply_plan(plan)
        except CheckFailed as e:
            self.reject(snap, [str(e)])
            return None
        self.metrics.reconcile_seconds.observe(time.monotonic() - started)
        self.metrics.reconciles.labels("applied").inc()
        self.metrics.last_success.set_to_current_time()
        self.state = state
        self._applied_tree = snap.tree
        self._serving_models = plan.serving_models
        self._health_model = health_model
        self.status.problems = list(plan.problems)
        self._mark_applied(snap)
        self._update_status(state)
        return state

    def _mark_applied(self, snap: Snapshot) -> None:
        self.status.applied_version = snap.version
        self.status.applied_at = time.time()
        self.status.source_stale_since = snap.received_at if snap.stale else None

    async def _serving_models_for(self, state: ClusterState) -> tuple[ModelSpec, ...]:
        """models.config's list: model.name's models. A model that leaves the list stays
        loaded (as it was) until every listed model is AVAILABLE on every reachable
        serving node and MODEL_LINGER has passed, so a switch from one model to another
        leaves no node without the model a request asks for; a model added or removed
        beside others changes nothing for them."""
        if state.me.role is not Role.MODEL_SERVING:
            return ()
        wanted = state.params.models
        names = {m.name for m in wanted}
        old = tuple(m for m in self._serving_models if m.name not in names)
        if not old:
            self._switch_started = self._switch_ready_at = None
            return wanted
        now = time.monotonic()
        self._switch_started = self._switch_started or now
        states = await asyncio.gather(*(model_state(n.ip, m.name) for n in state.active_serving_nodes for m in wanted))
        if any(s is False for s in states) or not any(states):
            self._switch_ready_at = None
        else:
            self._switch_ready_at = self._switch_ready_at or now
        done = self._switch_ready_at is not None and now - self._switch_ready_at >= MODEL_LINGER
        if done or now - self._switch_started > MODEL_SWITCH_MAX:
            logger.info("model.switched", models=sorted(names), unloading=[m.name for m in old])
            self._switch_started = self._switch_ready_at = None
            return wanted
        self.pending = True
        return (*wanted, *old)

    def _health_model_for(self, state: ClusterState) -> str:
        """The model Envoy health-checks upstreams on: kept while model.name lists it, else
        the first listed model this node already serves (so adding or removing a model
        does not make every node unhealthy at once), else the first listed."""
        names = state.params.model_names
        if self._health_model in names:
            return self._health_model
        served = {m.name for m in self._serving_models}
        return next((n for n in names if n in served), names[0])

    def _retired_listeners(self, state: ClusterState) -> tuple[tuple[str, int], ...]:
        """Old public ports still in their grace period after a port change."""
        now = time.monotonic()
        if self.state is not None:
            old, new = self.state.params, state.params
            for kind, before, after in (("rest", old.http_port, new.http_port), ("grpc", old.grpc_port, new.grpc_port)):
                if before != after:
                    self._retired[(kind, before)] = now + PORT_GRACE
        self._retired = {k: t for k, t in self._retired.items() if t > now}
        if self._retired:
            self.pending = True
        return tuple(sorted(self._retired))

    async def _apply_plan(self, plan: NodePlan) -> None:
        envoy_live = self.supervisor is not None and self.supervisor.pid(ENVOY) is not None
        previous = {f.path: _read(f.path) for f in plan.files if f.check is Check.ENVOY_DYNAMIC}
        admin = EnvoyAdmin.of_node(plan.state.me.ip)
        rejected_before = await admin.rejections() if envoy_live else (0, 0)
        changed = await replace_files(list(plan.files), check=lambda staged: check_staged(staged, self.paths.envoy_dynamic))
        if changed:
            logger.info("files.replaced", files=[str(f.path.relative_to(self.paths.data_dir)) for f in changed])
        if self.supervisor is not None:
            server_before = self.supervisor.pid(MODEL_SERVER)
            await self.supervisor.ensure(list(plan.processes))
            models_config = next((f for f in changed if f.path == self.paths.models_config), None)
            # A server started just now reads the file itself; a running one is told.
            if models_config is not None and server_before is not None and server_before == self.supervisor.pid(MODEL_SERVER):
                self._start_reload(plan.state, models_config.content.decode())
        dynamic = {f.path.name: f for f in changed if f.check is Check.ENVOY_DYNAMIC}
        if envoy_live and dynamic:
            try:
                await wait_applied(
                    admin,
                    dynamic["lds.yaml"].version if "lds.yaml" in dynamic else None,
                    dynamic["cds.yaml"].version if "cds.yaml" in dynamic else None,
                    rejected_before,
                )
            except CheckFailed:
                # Envoy kept its previous config; put the files back so disk says what runs.
                await replace_files([RenderedFile(p, c, check=Check.NONE) for p, c in previous.items() if c is not None])
                raise

    def _start_reload(self, state: ClusterState, config_text: str) -> None:
        """Tell the running model server about the new models.config at once (its own
        poll of the file stays as the fallback). In the background: the answer comes
        once the new models are loaded, and the apply loop must not wait for that."""
        from agent.serving.backend import admin_target, resolve_backend

        if self._reload is not None:
            self._reload.cancel()  # superseded by this config
        target = admin_target(resolve_backend(state.params.serving_backend), self.paths.serving_admin_socket,
                              state.me.ip, SERVING_GRPC_PORT)
        self._reload = asyncio.create_task(_reload(target, config_text), name="model-server-reload")

    def _update_status(self, state: ClusterState) -> None:
        self.status.node = asdict(state.me)
        self.status.params = state.params.public()
        percent = state.params.model_canary_percent
        self.status.models = [{**m.to_dict(), "canary_percent": percent if m.label("canary") is not None else 0}
                              for m in state.params.models]
        active = {n.instance_id for n in state.active_serving_nodes}
        self.status.serving_nodes = [{**asdict(n), "active": n.instance_id in active} for n in state.serving_nodes]
        self.status.repo_node = asdict(state.repo_node) if state.repo_node else None


async def _reload(target: str, config_text: str) -> None:
    from agent.clients.model_server import ReloadFailed, reload_config

    started = time.monotonic()
    try:
        await reload_config(target, config_text, RELOAD_TIMEOUT)
    except (ReloadFailed, ValueError, OSError) as e:
        # The server's own poll of the file still brings the change, a moment later.
        logger.warning("model_server.reload_failed", target=target, error=str(e))
    else:
        logger.info("model_server.reloaded", target=target, seconds=round(time.monotonic() - started, 3))


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
