"""What the console reads from the running agent: one record, built by the daemon."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from agent.metrics import Metrics
from agent.paths import Paths
from agent.console.timeline import Timeline


@dataclass
class ConsoleContext:
    """The console's view of its agent. Every callable is read on each request (values change live)."""

    paths: Paths
    status: Callable[[], dict[str, Any]]  # AgentStatus.to_dict(); secrets already masked
    metrics: Metrics
    envoy_admin_url: str  # loopback admin API, e.g. http://127.0.0.1:8001
    model_server_url: str  # REST base, e.g. http://<node ip>:8501
    password: Callable[[], str]  # web.password in force; "" = console open
    timeline: Timeline | None = None  # the live charts' samples and events; None: no charts
