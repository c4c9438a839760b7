"""The node's health as the platform's health check sees it, and the repair its
health action runs.

A node is healthy if and only if its Envoy is ready, its model server reports
every model of model.name AVAILABLE (serving nodes), its MinIO answers its liveness probe (a model_repo
node with s3.type minio), nothing it should run is missing (status `problems`), and the
agent has applied the newest metadata it received. The repair restarts only what is
broken: Envoy when it is not ready, the model server or MinIO when it does not answer; a
model that is not available while its server answers, a missing binary, or metadata that
was refused, is not fixed by a restart and is only reported.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass

from agent import log
from agent.clients.model_server import model_state
from agent.modelstore.repo_node import HEALTH_PATH, minio_address, minio_live, runs_minio
from agent.nodeops.lifecycle import Lifecycle
from agent.nodeops.view import NodeView, metadata_problem
from agent.processes.names import ENVOY, MINIO, MODEL_SERVER
from agent.state import Role

logger = log.get(__name__)


@dataclass(frozen=True)
class HealthReport:
    """One health check of this node."""

    healthy: bool
    envoy_ready: bool
    # None on a node without a model server (model_repo).
    model_server_answering: bool | None
    model_available: bool | None
    metadata_applied: bool
    reasons: tuple[str, ...]
    # None on a node without MinIO (every node but a model_repo node with s3.type minio).
    minio_live: bool | None = None
    # Serving nodes: each model of model.name and whether it is AVAILABLE here (None: no answer).
    models: dict[str, bool | None] | None = None

    def to_dict(self) -> dict:
        """JSON-ready."""
        return asdict(self)


async def check(view: NodeView, lifecycle: Lifecycle, extra: str | None = None) -> HealthReport:
    """Check this node now; `extra` is why the metadata the source holds is not in
    force (from `NodeView.catch_up`), if it is not."""
    state = view.state()
    reasons: list[str] = []
    if lifecycle.stopped:
        reasons.append("services are stopped (platform stop); run start")
    if lifecycle.draining:
        reasons.append("the node is draining")
    problem = metadata_problem(view) or extra
    applied = problem is None
    if problem:
        reasons.append(problem)
    if state is None:
        return HealthReport(False, False, None, None, applied, tuple(reasons))

    serving = state.me.role is Role.MODEL_SERVING
    names = state.params.model_names if serving else ()
    minio = runs_minio(state)
    ready, live, *per_model = await asyncio.gather(
        view.admin().ready(),
        minio_live(state.me.ip) if minio else _none(),
        *(model_state(state.me.ip, name) for name in names),
    )
    models = dict(zip(names, per_model)) if serving else None
    # The server answers when any model's status came back; available when all are.
    model = None if serving and all(m is None for m in per_model) else all(m is True for m in per_model)
    problems = list(view.agent_status.problems)
    reasons += problems
    if minio and not live and not problems:
        reasons.append(f"MinIO does not answer on {minio_address(state.me.ip)}{HEALTH_PATH}")
    if not ready:
        reasons.append("Envoy is not ready")
    drift = await lifecycle.drift.check() if ready else ()
    reasons.extend(drift)
    answering = (model is not None) if serving else None
    available = bool(model) if serving else None
    if serving and model is None:
        reasons.append("the model server does not answer")
    elif serving and not model:
        missing = [n for n, m in zip(names, per_model) if m is not True]
        reasons.append(f"the model server does not report {', '.join(missing)} AVAILABLE")
    live = bool(live) if minio else None
    healthy = (ready and applied and available is not False and live is not False and not problems
               and not lifecycle.stopped and not lifecycle.draining and not drift)
    return HealthReport(healthy, ready, answering, available, applied, tuple(reasons), live, models)


async def _none() -> None:
    return None


async def repair(lifecycle: Lifecycle, report: HealthReport) -> list[str]:
    """Restart what `report` found broken; returns the processes restarted."""
    processes = lifecycle.processes
    if report.healthy or processes is None or lifecycle.stopped or lifecycle.draining:
        return []
    drift = tuple(r for r in report.reasons if r in lifecycle.drift.drift)
    if drift and report.envoy_ready:
        # Put back what metadata says; a drained Envoy comes back by a restart.
        if "restart envoy" in await lifecycle.drift.restore(drift):
            return [ENVOY]
    restarted = []
    if not report.envoy_ready:
        restarted.append(ENVOY)
    if report.model_server_answering is False:
        restarted.append(MODEL_SERVER)
    if report.minio_live is False and processes.pid(MINIO) is not None:
        restarted.append(MINIO)  # running but not answering (a missing binary is only reported)
    for name in restarted:
        logger.warning("health.restart", process=name, reasons=list(report.reasons))
        await processes.restart(name)
    if not restarted:
        logger.info("health.nothing_to_restart", reasons=list(report.reasons))
    return restarted
