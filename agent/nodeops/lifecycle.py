"""The platform's lifecycle on this node, one per agent: draining (drain.py), stopping
and starting the services (services.py), the scale checks (scaling.py) and Envoy admin
drift (drift.py), around the node's held processes (agent/processes/held.py). The
control API (control.py) calls it; the hooks (agent/commands/hook.py) turn its answers
into exit codes."""

from __future__ import annotations

from dataclasses import dataclass

from agent.nodeops.drain import Drainer
from agent.nodeops.drift import EnvoyDrift
from agent.nodeops.scaling import Scaling
from agent.nodeops.services import Hold, Services
from agent.nodeops.view import NodeView
from agent.processes.held import NodeProcesses
from agent.processes.supervisor import ProcessManager


@dataclass(frozen=True)
class Lifecycle:
    """The lifecycle operations of one node, wired once by `build`."""

    hold: Hold
    drainer: Drainer
    services: Services
    drift: EnvoyDrift
    scaling: Scaling
    # None when the agent runs no process (tests of the pipeline alone).
    processes: NodeProcesses | None

    @classmethod
    def build(cls, view: NodeView, manager: ProcessManager | None) -> "Lifecycle":
        """The operations for the node `view` shows; `manager` runs its processes."""
        hold = Hold(view.paths.state)
        drainer = Drainer(view)
        processes = None
        if manager is not None:
            processes = NodeProcesses(manager, held=lambda: hold.stopped,
                                      before_restart=drainer.before_model_server_restart, after_restart=drainer.undrain)
        return cls(hold, drainer, Services(view, hold, drainer, processes), EnvoyDrift(view, hold, drainer, processes),
                   Scaling(view, drainer), processes)

    @property
    def stopped(self) -> bool:
        """The services are held stopped (platform stop, until start)."""
        return self.hold.stopped

    @property
    def draining(self) -> bool:
        """The node is draining."""
        return self.drainer.draining

    def status(self) -> dict:
        """What status shows about the lifecycle."""
        drift = {"envoy_drift": list(self.drift.drift)} if self.drift.drift else {}  # shown only when there is some
        return {"stopped": self.stopped, "draining": self.draining, **drift}
