"""What the agent knows about itself right now: shown by `status`, the console and health checks."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from agent import __version__


@dataclass
class Rejection:
    """A snapshot that was refused, and why."""

    at: float
    source: str
    version: str
    reasons: list[str]


@dataclass
class AgentStatus:
    """Mutable status record owned by the agent; everyone else reads `to_dict()`."""

    node: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    source_stale_since: float | None = None
    applied_version: str = ""
    applied_at: float | None = None
    received_version: str = ""
    received_at: float | None = None
    last_rejection: Rejection | None = None
    params: dict[str, Any] = field(default_factory=dict)
    serving_nodes: list[dict[str, Any]] = field(default_factory=list)
    repo_node: dict[str, Any] | None = None
    processes: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_sync: dict[str, Any] = field(default_factory=dict)
    # The models model.name lists: name, version policy, labels, canary percent.
    models: list[dict[str, Any]] = field(default_factory=list)
    # Why something this node should run does not (a missing `minio` executable, ...).
    problems: list[str] = field(default_factory=list)
    # The model_repo node's MinIO bucket seeding (agent/modelstore/repo_node.py); empty elsewhere.
    repository: dict[str, Any] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    agent_version: str = __version__

    @property
    def up_to_date(self) -> bool:
        """True when the newest snapshot received is the one applied."""
        return self.received_version == self.applied_version and self.applied_at is not None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (secrets are already masked in `params`)."""
        out = asdict(self)
        out["up_to_date"] = self.up_to_date
        return out
