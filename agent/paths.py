"""Where a node keeps its models, logs, rendered configuration and agent state."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PLATFORM_DATA_DIR = Path("/data")


@dataclass(frozen=True)
class Paths:
    """Every directory the agent and the processes it runs use, all under one data dir."""

    data_dir: Path

    @property
    def models(self) -> Path:
        return self.data_dir / "models"

    @property
    def logs(self) -> Path:
        return self.data_dir / "logs"

    @property
    def conf(self) -> Path:
        return self.data_dir / "conf"

    @property
    def envoy_conf(self) -> Path:
        return self.conf / "envoy"

    @property
    def envoy_dynamic(self) -> Path:
        """The directory Envoy watches for its listeners, clusters and endpoints."""
        return self.envoy_conf / "dynamic"

    @property
    def serving_conf(self) -> Path:
        return self.conf / "serving"

    @property
    def models_config(self) -> Path:
        return self.serving_conf / "models.config"

    @property
    def state(self) -> Path:
        """Agent state that must survive restarts (last good tree, last command id)."""
        return self.data_dir / "state"

    @property
    def run(self) -> Path:
        """Runtime files: the control socket."""
        return self.data_dir / "run"

    @property
    def control_socket(self) -> Path:
        return self.run / "agent.sock"

    @property
    def serving_admin_socket(self) -> Path:
        """The built-in model server's admin channel (reload), for the agent alone."""
        return self.run / "serving.sock"

    def ensure(self) -> None:
        """Create every directory; state and run are private to the agent's user."""
        for d in (self.models, self.logs, self.envoy_dynamic, self.serving_conf):
            d.mkdir(parents=True, exist_ok=True)
        for d in (self.state, self.run):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)


def default_paths(data_dir: str | os.PathLike | None) -> Paths:
    """Paths under `data_dir`, or the platform's `/data` when none is given."""
    return Paths(Path(data_dir).resolve() if data_dir else PLATFORM_DATA_DIR)
