"""The checks behind the platform's scale hooks: the scale-in pre-check, scale-in on a
remaining node, scale-out on an existing node. Each answers for the metadata the platform
wrote just before calling the hook (a fresh read of the source, applied)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from enum import IntEnum

from agent.clients.model_server import model_available
from agent.nodeops.drain import Drainer, wait_until
from agent.nodeops.view import NodeView, metadata_problem


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


class Scaling:
    """The scale checks on this node."""

    def __init__(self, view: NodeView, drainer: Drainer):
        self.view = view
        self.drainer = drainer

    async def wait_applied(self, timeout: float) -> Verdict:
        """Bring the agent up to date with its source (a fresh read, applied), so the
        answer is for the metadata the platform wrote before calling the hook."""
        problem = await self.view.catch_up(timeout)
        if problem is None:
            problem = metadata_problem(self.view)
        if problem is None:
            return Verdict(0, "metadata applied")
        return Verdict(Refusal.METADATA_NOT_APPLIED, f"this node: {problem}")

    async def scale_in_check(self, timeout: float = 10.0) -> Verdict:
        """The scale-in pre-check: refuse to remove every serving node, or to remove
        nodes when a model of model.name would be served by no remaining serving node."""
        verdict = await self.wait_applied(timeout)
        if not verdict.ok:
            return verdict
        state = self.view.state()
        serving = {n.instance_id for n in state.serving_nodes}
        leaving = sorted(serving & state.deleting)
        if not leaving:
            return Verdict(0, "no serving node is being removed")
        remaining = state.active_serving_nodes
        if not remaining:
            return Verdict(Refusal.LAST_SERVING_NODE,
                           f"removing {', '.join(leaving)} would leave no serving node; keep at least one")
        names = state.params.model_names
        found = await asyncio.gather(*(model_available(n.ip, m) for m in names for n in remaining))
        by_model = {m: sum(found[i * len(remaining):(i + 1) * len(remaining)]) for i, m in enumerate(names)}
        unserved = [m for m, count in by_model.items() if not count]
        if unserved:
            return Verdict(Refusal.NO_HEALTHY_REMAINING,
                           f"no remaining serving node ({', '.join(n.instance_id for n in remaining)}) serves "
                           f"{', '.join(unserved)}; removing nodes now would stop the service")
        serving = ", ".join(f"{count} serving {m}" for m, count in by_model.items())
        return Verdict(0, f"{len(remaining)} serving node(s) remain, {serving}")

    async def scale_in(self, timeout: float) -> Verdict:
        """The scale-in service on a remaining node: the pre-check's rules again, then
        wait until this node's Envoy sends nothing more to the leaving nodes."""
        deadline = time.monotonic() + timeout
        verdict = await self.scale_in_check(timeout)
        if not verdict.ok:
            return verdict
        state = self.view.state()
        leaving = {n.ip for n in state.serving_nodes if n.instance_id in state.deleting}
        if not leaving:
            return verdict
        if await wait_until(lambda: self._routes_none_of(leaving), deadline):
            return Verdict(0, f"this node no longer routes to {', '.join(sorted(leaving))}")
        return Verdict(Refusal.LEAVING_NODE_STILL_ROUTED,
                       f"this node's Envoy still routes to {', '.join(sorted(leaving))} after {timeout:.0f}s")

    async def _routes_none_of(self, ips: set[str]) -> bool:
        envoy = await self.view.envoy_view()
        if not envoy.reachable:
            return False
        return not any(h.address in ips for c in envoy.clusters for h in c.hosts)

    async def scale_out(self, timeout: float) -> Verdict:
        """The scale-out service on an existing node: wait until this node's Envoy has
        every added serving node and finds it serving (Envoy's health check)."""
        deadline = time.monotonic() + timeout
        verdict = await self.wait_applied(timeout)
        if not verdict.ok:
            return verdict
        state = self.view.state()
        added = {n.ip: n.instance_id for n in state.active_serving_nodes if n.instance_id in state.adding}
        if not added:
            return Verdict(0, "no serving node was added")
        if await wait_until(lambda: self.drainer.all_healthy(set(added)), deadline):
            return Verdict(0, f"added node(s) {', '.join(sorted(added.values()))} serve {', '.join(state.params.model_names)}")
        return Verdict(Refusal.ADDED_NODE_NOT_SERVING,
                       f"added node(s) {', '.join(sorted(added.values()))} did not serve {', '.join(state.params.model_names)} "
                       f"within {timeout:.0f}s")
