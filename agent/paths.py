"""Where a node keeps its models, logs, rendered configuration and agent state, and where
the project's own files (templates, schema, hooks, units) are found."""

from __future__ import annotations

import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path

PLATFORM_DATA_DIR = Path("/data")

# The files the agent reads at run time (templates/, config_schema.json, examples/) and
# those a platform image installs (hooks/, systemd/, platform/, docs/) keep the layout of
# the checkout's top level. A wheel carries them as package data in agent/_resources
# (setup.py copies them at build time); an editable install or a plain checkout reads
# the top level itself.
PACKAGED_FILES_DIR = "_resources"
# A file every copy has: how a complete copy is told from a stray directory.
PROJECT_FILES_MARKER = "config_schema.json"


def _project_files() -> Path:
    """Where the project's files are: the installed package's copy, else the checkout."""
    packaged = Path(str(importlib.resources.files("agent") / PACKAGED_FILES_DIR))
    checkout = Path(__file__).resolve().parent.parent
    for root in (packaged, checkout):
        if (root / PROJECT_FILES_MARKER).is_file():
            return root
    # Neither: a broken install. Errors then name the missing file inside the package.
    return packaged


PROJECT_FILES = _project_files()


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
    def serving_traffic(self) -> Path:
        """The built-in server's canary split per model (agent/serving/canary.py)."""
        return self.serving_conf / "traffic.json"

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
