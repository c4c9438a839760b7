"""The narrow view of the node that node operations take instead of the Agent: the state
in force, status, sync status, the models being served, catching up with the metadata
source, and this node's Envoy admin client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

from agent.clients.envoy_admin import EnvoyAdmin, EnvoyView
from agent.paths import Paths
from agent.state import ClusterState
from agent.status import AgentStatus


@dataclass(frozen=True)
class NodeView:
    """What node operations may see of the node; the Agent builds it from what it owns."""

    paths: Paths
    source: str  # the metadata source's description
    state: Callable[[], ClusterState | None]  # the state in force
    status: Callable[[], dict]  # the agent's status, JSON-ready
    agent_status: AgentStatus  # the live record (problems, received/applied versions)
    sync_status: Callable[[], dict]  # the model store sync's status
    serving_models: Callable[[], tuple[str, ...]]  # what models.config lists now
    # Read the source afresh and wait until that tree is in force: None, or why not.
    catch_up: Callable[[float], Awaitable[str | None]]

    def admin(self) -> EnvoyAdmin | None:
        """This node's Envoy admin API, once a state is in force."""
        state = self.state()
        return EnvoyAdmin.of_node(state.me.ip) if state else None

    async def envoy_view(self) -> EnvoyView:
        """This node's Envoy's clusters and hosts with their health."""
        admin = self.admin()
        if admin is None:
            return EnvoyView(reachable=False, error="no metadata applied yet")
        return await admin.cluster_view()


def metadata_problem(view: NodeView) -> str | None:
    """Why the newest metadata is not in force on this node, or None when it is."""
    if view.state() is None:
        return "no metadata applied yet"
    status = view.status()
    if not status["up_to_date"]:
        rejection = status["last_rejection"]
        why = f": {'; '.join(rejection['reasons'])}" if rejection and rejection["version"] == status["received_version"] else ""
        return f"metadata version {status['received_version'] or '?'} not applied{why}"
    if status["source_stale_since"] is not None:
        return f"metadata source unreachable; running on the last good tree ({view.source})"
    return None
