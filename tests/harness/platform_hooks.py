"""Calling the hooks as the platform does: the command and timeout that
platform/cluster.json.mustache gives a service, the service_params JSON as the last
argument, and the node's environment."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from agent import PROJECT_ROOT
from tests.harness.foundation_trees import single_node_tree

CLUSTER_JSON = PROJECT_ROOT / "platform" / "cluster.json.mustache"
INSTALL_PREFIX = "/opt/inference-agent"
MONITOR_LIMIT = 5.0  # the platform's rule for monitor commands


def cluster_json() -> dict:
    """cluster.json.mustache with every placeholder filled with 0: plain JSON."""
    return json.loads(re.sub(r"\{\{[^}]+\}\}", "0", CLUSTER_JSON.read_text()))


def service(role: str, name: str) -> tuple[str, float]:
    """(command, timeout) of a service: init, start, ..., scale_in, scale_in.pre_check,
    health_check.check_cmd, health_check.action_cmd or monitor."""
    node = next(n for n in cluster_json()["nodes"] if n["role"] == role)
    if name == "monitor":
        cmd, timeout = node["monitor"]["cmd"], MONITOR_LIMIT
    elif name.startswith("health_check."):
        hc = node["health_check"]
        key = name.split(".", 1)[1]
        cmd, timeout = hc[key], hc["timeout_sec" if key == "check_cmd" else "action_timeout_sec"]
    elif name.endswith(".pre_check"):
        svc = node["services"][name.split(".", 1)[0]]
        cmd, timeout = svc["pre_check"], svc.get("timeout", 600)
    else:
        svc = node["services"][name]
        cmd, timeout = svc["cmd"], svc.get("timeout", 600)
    # The package is installed in /opt/inference-agent on platform nodes; here, this checkout.
    return str(PROJECT_ROOT) + cmd.removeprefix(INSTALL_PREFIX), float(timeout)


def repo_node_tree(ip: str, **env: str) -> dict:
    """A lone model_repo node (Envoy only; MinIO when s3.type is minio), with env overrides."""
    tree = single_node_tree(ip, **env)
    tree["host"]["role"] = "model_repo"
    tree["hosts"] = {"model_repo": {tree["host"]["instance_id"]: dict(tree["host"])}}
    return tree


@dataclass
class HookRun:
    """One finished hook."""

    code: int
    stdout: str
    stderr: str
    seconds: float


def run_hook(data_dir: Path, name: str, params: dict | None = None, *, role: str = "model_serving",
             metadata: Path | None = None, timeout: float | None = None) -> HookRun:
    """Run the platform service `name` of `role` on the node at `data_dir`."""
    cmd, platform_timeout = service(role, name)
    argv = [cmd] + ([json.dumps(params)] if params is not None else [])
    env = {**os.environ, "INFERENCE_AGENT_DATA_DIR": str(data_dir)}
    if metadata is not None:
        env["INFERENCE_AGENT_METADATA"] = str(metadata)
    started = time.monotonic()
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout or platform_timeout)
    return HookRun(out.returncode, out.stdout, out.stderr, time.monotonic() - started)
