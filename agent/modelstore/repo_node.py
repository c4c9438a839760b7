"""The model_repo node's model store: MinIO as one of the node's processes, its
health probe, and the first fill of its bucket.

On a model_repo node with s3.type minio the plan asks for `minio server --address
<node ip>:9000 <data>/minio/data`; the root credentials (s3.access.key/s3.secret.key)
reach MinIO through an environment file of mode 0600 (`<conf>/minio.env`), never its
command line. The process runs under the local supervisor or systemd like Envoy. When
no `minio` executable is on PATH the plan says so, and status, health and the console
show it. Once MinIO answers, the agent creates the bucket and uploads the built-in
models staged by init, once (a marker in the state dir records it).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from agent import log
from agent.envfile import render_env
from agent.files import RenderedFile
from agent.paths import Paths
from agent.ports import MINIO_PORT
from agent.processes.names import MINIO
from agent.processes.supervisor import ProcessSpec
from agent.state import ClusterState, Role

if TYPE_CHECKING:
    from agent.modelstore import StoreConfig

logger = log.get(__name__)

MINIO_LOG = "minio.log"
HEALTH_PATH = "/minio/health/live"
# MinIO refuses to start with shorter root credentials.
MIN_USER_LENGTH = 3
MIN_PASSWORD_LENGTH = 8
SEED_MARKER = "repository-seeded.json"
PROBE_TIMEOUT = 1.0
RETRY = 2.0


def runs_minio(state: ClusterState) -> bool:
    """True when this node is the model_repo node and the cluster's store is MinIO."""
    return state.me.role is Role.MODEL_REPO and state.params.s3_type == "minio"


def minio_data_dir(paths: Paths) -> Path:
    """Where the model_repo node's MinIO keeps its data (the seed's /data/minio/data)."""
    return paths.data_dir / "minio" / "data"


def minio_env_file(paths: Paths) -> Path:
    """MinIO's environment file (its root credentials), mode 0600."""
    return paths.conf / "minio.env"


def minio_address(ip: str) -> str:
    """host:port MinIO listens on: the node's IP, port 9000."""
    host = f"[{ip}]" if ":" in ip else ip
    return f"{host}:{MINIO_PORT}"


@dataclass(frozen=True)
class MinioPlan:
    """MinIO's part of a node plan: its environment file and process, or why it cannot run."""

    files: tuple[RenderedFile, ...] = ()
    process: ProcessSpec | None = None
    problem: str | None = None


def plan_minio(state: ClusterState, paths: Paths) -> MinioPlan:
    """MinIO's files and process for this node (nothing unless `runs_minio(state)`)."""
    if not runs_minio(state):
        return MinioPlan()
    binary = shutil.which("minio")
    if binary is None:
        return MinioPlan(problem=(
            "MinIO is not installed: no `minio` executable on PATH, so the model repository at "
            f"{minio_address(state.me.ip)} is down; install MinIO's server binary as `minio` on PATH and "
            "restart the agent (for a local try-out without MinIO: `inference-agent up --repo`)"
        ))
    p = state.params
    if len(p.s3_access_key) < MIN_USER_LENGTH or len(p.s3_secret_key) < MIN_PASSWORD_LENGTH:
        return MinioPlan(problem=(
            f"MinIO cannot start: it needs s3.access.key of at least {MIN_USER_LENGTH} characters and "
            f"s3.secret.key of at least {MIN_PASSWORD_LENGTH}"
        ))
    try:
        content = render_env(
            (("MINIO_ROOT_USER", p.s3_access_key), ("MINIO_ROOT_PASSWORD", p.s3_secret_key),
             # The web console would be one more listener with the root credentials.
             ("MINIO_BROWSER", "off")),
            "minio", header="Written by inference-agent: MinIO's root credentials. Edits are overwritten.",
        )
    except ValueError as e:
        return MinioPlan(problem=f"MinIO cannot start: {e}")
    env_file = minio_env_file(paths)
    argv = (binary, "server", "--address", minio_address(state.me.ip), str(minio_data_dir(paths)))
    spec = ProcessSpec(MINIO, argv, paths.logs / MINIO_LOG,
                       generation=hashlib.sha256(content).hexdigest()[:12], env_file=env_file)
    return MinioPlan((RenderedFile(env_file, content, mode=0o600),), spec)


async def minio_live(ip: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """True when MinIO on `ip` answers its liveness probe."""
    url = f"http://{minio_address(ip)}{HEALTH_PATH}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.get(url) as resp:
                return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


class RepoSeeder:
    """Creates the bucket and uploads the built-in models staged in `<data>/models`,
    once per repository location, as soon as this node's MinIO answers. Owned by the
    agent: `update()` on every applied state, `run()` as one of its tasks."""

    def __init__(self, paths: Paths):
        self.paths = paths
        self._marker = paths.state / SEED_MARKER
        self._store: "StoreConfig | None" = None
        self._ip = ""
        self._wake = asyncio.Event()
        self._state = "disabled"
        self._error: str | None = None
        self._seeded: dict[str, Any] | None = self._read_marker()

    def _read_marker(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self._marker.read_text())
            return value if isinstance(value, dict) else None
        except (OSError, ValueError):
            return None

    def update(self, state: ClusterState) -> None:
        """Take an applied state: seed when this node runs MinIO for a location not seeded yet."""
        from agent.modelstore import store_config_for

        store = store_config_for(state) if runs_minio(state) else None
        if (store, state.me.ip) != (self._store, self._ip):
            self._store, self._ip = store, state.me.ip
            self._wake.set()

    def _done(self, store: "StoreConfig") -> bool:
        return bool(self._seeded) and self._seeded.get("location") == store.location

    async def _sleep(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def run(self) -> None:
        """Seed when needed until cancelled."""
        from agent.modelstore import StoreError, seed_bucket

        while True:
            self._wake.clear()
            store = self._store
            if store is None or self._done(store):
                self._state = "disabled" if store is None else "done"
                await self._wake.wait()
                continue
            if not await minio_live(self._ip):
                self._state = "waiting for MinIO"
                await self._sleep(0.5)
                continue
            self._state = "seeding"
            try:
                models = await seed_bucket(store, self.paths.models)
            except StoreError as e:
                self._state, self._error = "error", str(e)
                logger.warning("repository.seed_failed", error=str(e))
                await self._sleep(RETRY)
                continue
            self._seeded = {"at": time.time(), "location": store.location, "models": models}
            await asyncio.to_thread(self._write_marker, self._seeded)
            self._error = None
            logger.info("repository.seeded", models=models, location=store.location)

    def _write_marker(self, value: dict[str, Any]) -> None:
        tmp = self._marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(value))
        os.replace(tmp, self._marker)

    def status(self) -> dict[str, Any]:
        """JSON-ready: the seeding state, its last error, and what was seeded when."""
        return {"seed": self._state, "error": self._error, "seeded": self._seeded}
