"""The agent's Prometheus metrics, one registry per agent (several agents may share a process in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """Every metric the agent exports on the console's /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reconciles = Counter("agent_reconciles", "Snapshots applied", ["result"], registry=r)
        self.reconcile_seconds = Histogram("agent_reconcile_duration_seconds", "Time to apply a snapshot", registry=r)
        self.last_success = Gauge("agent_last_reconcile_success_timestamp_seconds", "Time of the last applied snapshot", registry=r)
        self.rejected = Counter("agent_rejected_snapshots", "Snapshots rejected as invalid", registry=r)
        self.sync_bytes = Counter("agent_model_sync_bytes", "Bytes downloaded from the model store", registry=r)
        self.sync_seconds = Histogram("agent_model_sync_duration_seconds", "Duration of model syncs", registry=r)
        self.sync_errors = Counter("agent_model_sync_errors", "Model syncs that failed", registry=r)
        self.commands = Counter("agent_commands", "Lifecycle commands run", ["result"], registry=r)
        self.model_version_runtime = Gauge(
            "agent_model_version_runtime_info", "Loaded model versions by runtime and precision (value 1)",
            ["model", "version", "runtime", "precision"], registry=r)
        self.process_restarts = Counter("agent_process_restarts", "Supervised process restarts", ["process"], registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
