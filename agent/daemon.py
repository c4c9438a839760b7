"""The Agent: owns every long-running task of a node and wires the modules together.

    source --snapshots--> debounce --> Reconciler.apply --> files, processes,
                                          |                  model sync, /self/cmd
                                          +--> status (control socket, console)
"""

from __future__ import annotations

import asyncio
import time

import structlog
from aiohttp import web

from agent import limits, log
from agent.console import ConsoleContext, start_console
from agent.console.guard import server_ssl_context
from agent.console.sampler import Sampler as ChartSampler
from agent.console.timeline import Timeline
from agent.files import remove_stale_staging
from agent.metadata import Snapshot, Source
from agent.metadata.cache import LastGoodTree, with_fallback
from agent.metrics import Metrics
from agent.modelstore import ModelSyncer, store_config_for
from agent.modelstore.repo_node import RepoSeeder
from agent.nodeops.control import create_control_app, start_control
from agent.nodeops.lifecycle import Lifecycle
from agent.nodeops.monitor import Sampler as MonitorSampler
from agent.nodeops.selfcmd import CommandRunner
from agent.nodeops.view import NodeView, metadata_problem
from agent.paths import Paths
from agent.pipeline.reconcile import Reconciler
from agent.ports import CONSOLE_PORT, envoy_admin_url, model_server_url
from agent.processes.supervisor import Supervisor
from agent.processes.systemd import SystemdUnits, keep_watchdog, notify, systemd_mode, watchdog_interval
from agent.state import ClusterState, Role
from agent.status import AgentStatus

logger = log.get(__name__)

# Quiescence against bursts of changes (consul-template's wait min/max): apply once
# no new snapshot arrived for QUIET seconds, but never later than MAX_WAIT after the first.
QUIET = 0.05
MAX_WAIT = 0.5
# While an apply is not final (a model switch in progress), re-apply this often.
PENDING_RETRY = 0.5
# A fresh read of the source for `catch_up` gives up after this long.
READ_TIMEOUT = 10.0


# asyncio.timeout rather than wait_for below: on Python 3.11 wait_for can swallow a
# cancellation that arrives as the wait completes, and shutdown would hang.


class Agent:
    """One node's agent. `await Agent(...).run()` until cancelled; cancellation stops
    everything it started."""

    def __init__(self, paths: Paths, source: Source, *, manage_processes: bool = True, console: bool = True):


        self.paths = paths
        self.source = source
        self.metrics = Metrics()
        self.status = AgentStatus(source=source.description)
        self.syncer = ModelSyncer(paths.models, self.metrics)
        # What node operations see of this node: narrow, never the Agent itself.
        self.view = NodeView(
            paths=paths, source=source.description, state=lambda: self.reconciler.state, status=self.status_dict,
            agent_status=self.status, sync_status=self.syncer.status,
            serving_models=lambda: self.reconciler.serving_models, catch_up=self.catch_up,
        )
        manager = None
        if manage_processes:
            # systemd runs the processes on platform nodes; the agent itself elsewhere.
            manager = SystemdUnits(paths.conf / "systemd") if systemd_mode() else Supervisor(paths.run, self.metrics)
        # Lifecycle operations (drain, stop/start, scaling checks, Envoy drift) on this node.
        self.lifecycle = Lifecycle.build(self.view, manager)
        self.supervisor = self.lifecycle.processes
        self.reconciler = Reconciler(paths, self.status, self.metrics, self.supervisor)
        self.monitor_sampler = MonitorSampler(self.view)
        self.repo = RepoSeeder(paths)
        self.commands = CommandRunner(paths.logs, paths.state, self.metrics)
        self.last_good = LastGoodTree(paths.state / "last-good-tree.json")
        self._console_enabled = console
        # The console's live charts: sampled only for a console.
        self.timeline = Timeline()
        self.chart_sampler = ChartSampler(self.timeline, self.status_dict, self._envoy_admin_url, self._chart_interval)
        self._latest: Snapshot | None = None
        # Every snapshot handed to the apply loop gets the next number; `_attempt` is the
        # number of the last one the apply loop took (applied or refused), `_attempt_ok`
        # whether it is in force. `catch_up` waits on `_attempted` for its number.
        self._seq = 0
        self._attempt = 0
        self._attempt_ok = False
        self._attempted = asyncio.Condition()
        self._saved_tree: dict | None = None
        self._changed = asyncio.Event()
        self._control: web.AppRunner | None = None
        self._console: web.AppRunner | None = None
        self._console_tls: tuple[str, str] = ("", "")

    def status_dict(self) -> dict:
        """Current status, JSON-ready."""
        if self.supervisor:
            self.status.processes = self.supervisor.status()
        self.status.model_sync = self.syncer.status()
        self.status.repository = self.repo.status()
        if hasattr(self.source, "stale_since"):  # live sources know when they lost their server
            self.status.source_stale_since = self.source.stale_since
        return self.status.to_dict()

    async def run(self) -> None:
        """Run until cancelled."""
        # Every log line of this agent (several run in one process under `up --nodes`)
        # says which node it is about; tasks started below inherit the binding.
        structlog.contextvars.bind_contextvars(data_dir=str(self.paths.data_dir))
        self.paths.ensure()
        remove_stale_staging([self.paths.envoy_conf, self.paths.envoy_dynamic, self.paths.serving_conf])
        self._control = await start_control(create_control_app(self.view, self.lifecycle, self.monitor_sampler),
                                            self.paths.control_socket)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._consume(), name="metadata")
                tg.create_task(self._apply_loop(), name="reconcile")
                tg.create_task(self.syncer.run(), name="model-sync")
                tg.create_task(self.repo.run(), name="repository-seed")
                tg.create_task(self.commands.run(), name="commands")
                tg.create_task(self._rotate_logs(), name="log-rotation")
                tg.create_task(self.lifecycle.drift.run(), name="envoy-drift")
                tg.create_task(self.monitor_sampler.run(), name="monitor-sampler")
                interval = watchdog_interval()
                if interval:
                    tg.create_task(keep_watchdog(interval, _loop_alive), name="systemd-watchdog")
                if self._console_enabled:
                    tg.create_task(self.chart_sampler.run(), name="timeline")
        finally:
            await asyncio.shield(self._shutdown())

    async def _rotate_logs(self) -> None:
        """Keep the logs Envoy, the model server and the hooks append to within bounds."""
        while True:
            try:
                rotated = await asyncio.to_thread(log.rotate_owned_logs, self.paths.logs)
                if rotated:
                    logger.info("logs.rotated", files=rotated)
            except OSError as e:
                logger.warning("logs.rotation_failed", error=str(e))
            await asyncio.sleep(limits.LOG_ROTATE_INTERVAL)

    async def _shutdown(self) -> None:
        notify("STOPPING=1")
        await self.reconciler.close()
        for runner in (self._console, self._control):
            if runner is not None:
                await runner.cleanup()
        if self.supervisor:
            await self.supervisor.stop_all()
        logger.info("agent.stopped")

    async def _consume(self) -> None:
        async for snap in with_fallback(self.source, self.last_good):
            self._offer(snap)

    def _offer(self, snap: Snapshot) -> int:
        """Hand `snap` to the apply loop; returns its number."""
        self._seq += 1
        self._latest = snap
        self._changed.set()
        return self._seq

    async def catch_up(self, timeout: float) -> str | None:
        """Bring this agent up to date with its source before answering for the cluster:
        read the source afresh and wait until that tree is the one in force. None when it
        is, else why not (source unreadable, tree refused, not applied within `timeout`).

        The platform calls a hook right after writing metadata; the source's stream may
        not have delivered that write yet, so the fresh read is what the hook answers
        for. If the stream then delivers an older tree that was in flight, the loop reads
        again, so the answer is never for older metadata than the platform wrote."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    snap = await self.source.read()
            except TimeoutError:
                return f"no answer from the metadata source {self.source.description} within {timeout:.0f}s"
            if snap.error or snap.tree is None:
                return f"cannot read the metadata source {self.source.description}: {snap.error or 'no tree'}"
            latest = self._latest
            if latest is not None and latest.tree == snap.tree and not latest.stale:
                target = self._seq
            else:
                target = self._offer(snap)
            try:
                async with asyncio.timeout_at(deadline), self._attempted:
                    await self._attempted.wait_for(lambda: self._attempt >= target)
            except TimeoutError:
                return (f"metadata version {snap.version} read from {self.source.description} "
                        f"not applied within {timeout:.0f}s")
            if not self._attempt_ok:
                return metadata_problem(self.view) or f"metadata version {snap.version} not applied"
            if self.reconciler.applied_tree == snap.tree:
                return None
            # A different tree was applied after the read (an older one in flight, or a
            # newer write): read again.

    async def _attempted_upto(self, seq: int, ok: bool) -> None:
        async with self._attempted:
            self._attempt, self._attempt_ok = seq, ok
            self._attempted.notify_all()

    async def _quiesce(self) -> None:
        first = time.monotonic()
        while True:
            self._changed.clear()
            remaining = MAX_WAIT - (time.monotonic() - first)
            if remaining <= 0:
                return
            try:
                async with asyncio.timeout(min(QUIET, remaining)):
                    await self._changed.wait()
            except TimeoutError:
                return

    async def _apply_loop(self) -> None:
        while True:
            if self.reconciler.pending:
                try:
                    async with asyncio.timeout(PENDING_RETRY):
                        await self._changed.wait()
                except TimeoutError:
                    pass
            else:
                await self._changed.wait()
            await self._quiesce()
            snap, seq = self._latest, self._seq
            if snap is None:
                continue
            try:
                state = await self.reconciler.apply(snap)
            except Exception:  # e.g. a full disk: keep what runs, say why, try again soon
                logger.exception("reconcile.failed", version=snap.version, source=snap.source)
                self.metrics.reconciles.labels("failed").inc()
                self.reconciler.pending = True
                await self._attempted_upto(seq, False)
                continue
            await self._attempted_upto(seq, state is not None)
            if state is None:
                continue
            structlog.contextvars.bind_contextvars(node=state.me.instance_id, ip=state.me.ip)
            # Compare trees, not versions: metad's version counter restarts with metad.
            if not snap.stale and snap.tree != self._saved_tree:
                await asyncio.to_thread(self.last_good.save, snap)
                self._saved_tree = snap.tree
            # Only serving nodes keep local copies; the model_repo node holds the store itself.
            serving = state.me.role is Role.MODEL_SERVING
            self.syncer.update(store_config_for(state) if serving else None, state.params.model_names,
                               state.params.model_sync_interval)
            self.repo.update(state)
            self.commands.submit(state.cmd)
            tls = (state.params.tls_cert, state.params.tls_key)
            if self._console is not None and self._console_tls != tls:  # HTTPS turned on, off or re-keyed
                await self._console.cleanup()
                self._console = None
            if self._console_enabled and self._console is None:
                self._console_tls = tls
                await self._start_console(state)

    def _envoy_admin_url(self) -> str | None:
        state = self.reconciler.state
        return envoy_admin_url(state.me.ip) if state else None

    def _chart_interval(self) -> float:
        state = self.reconciler.state
        return state.params.web_charts_interval if state else 5

    async def _start_console(self, state: ClusterState) -> None:
        ctx = ConsoleContext(
            paths=self.paths,
            status=self.status_dict,
            metrics=self.metrics,
            envoy_admin_url=envoy_admin_url(state.me.ip),
            model_server_url=model_server_url(state.me.ip),
            password=lambda: self.reconciler.state.params.web_password if self.reconciler.state else "",
            timeline=self.timeline,
        )
        p = state.params
        try:
            context = server_ssl_context(p.tls_cert, p.tls_key) if p.tls else None
            self._console = await start_console(ctx, state.me.ip, CONSOLE_PORT, context)
        except OSError as e:  # ssl.SSLError included
            logger.error("console.unavailable", address=f"{state.me.ip}:{CONSOLE_PORT}", error=str(e))
            self._console_enabled = False


async def _loop_alive() -> bool:
    """The event loop runs tasks: the watchdog task itself got here."""
    await asyncio.sleep(0)
    return True
