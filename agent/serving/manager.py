"""Which model versions are loaded, and the rules for changing that.

The desired state is models.config plus the version directories on disk, filtered by
each model's version policy. A reconcile loads every wanted version first and only then
unloads what is no longer wanted, so a model switch or a new version never leaves a
gap: the old version keeps serving until its successor is AVAILABLE (or has failed).
A version that fails to load is reported as END with its error and retried only when
its files change; other versions and models are not disturbed."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import agent.log
from agent.serving import versions as version_dirs
from agent.serving.canary import CANARY, STABLE, CanarySplit
from agent.serving.config import ModelConfig
from agent.serving.errors import invalid_argument, not_found, unavailable
from agent.serving.protos import error_codes_pb2 as codes
from agent.serving.protos.get_model_status_pb2 import ModelVersionStatus
from agent.serving.servable import LoadError, Servable

log = agent.log.get(__name__)

LOADING = ModelVersionStatus.LOADING
AVAILABLE = ModelVersionStatus.AVAILABLE
END = ModelVersionStatus.END

Loader = Callable[[str, int, Path], Servable]
# How long `close` waits for the threads of the unloaded servables (a batch in progress).
JOIN_SECONDS = 10.0


@dataclass
class _Version:
    version: int
    state: int
    path: Path
    fingerprint: tuple
    servable: Servable | None = None
    error_code: int = codes.OK
    error: str = ""


@dataclass(frozen=True)
class VersionStatus:
    """One version's state as GetModelStatus reports it."""

    version: int
    state: int
    error_code: int = codes.OK
    error_message: str = ""


class ModelManager:
    """Owns the loaded servables; all methods run on the event loop, loads in `executor`."""

    def __init__(self, loader: Loader, executor: Executor):
        self._loader = loader
        self._executor = executor
        self._configs: dict[str, ModelConfig] = {}
        self._versions: dict[str, dict[int, _Version]] = {}
        self._lock = asyncio.Lock()
        # Unloaded servables whose threads may still run, kept until those threads ended:
        # so the runtimes (compiled models, infer requests) are released on the loop
        # thread, never by a batch thread dropping the last reference, which during
        # interpreter exit aborts the process (a daemon thread unwound inside OpenVINO).
        self._closing: list[Servable] = []
        # Which version unversioned requests of a model with a `canary` label go to.
        self.canary = CanarySplit()
        # Inference requests served per (model, version), for status and the console.
        self._served: dict[tuple[str, int], int] = {}

    def configured(self, name: str) -> bool:
        """Whether models.config names this model."""
        return name in self._configs

    @property
    def configs(self) -> list[ModelConfig]:
        """The model configs in force."""
        return list(self._configs.values())

    async def apply(self, configs: list[ModelConfig]) -> None:
        """Serve exactly these models; returns once new versions are loaded and old ones unloaded."""
        self._configs = {c.name: c for c in configs}
        log.info("models config applied", models=sorted(self._configs))
        await self.reconcile()

    async def reconcile(self) -> None:
        """Bring the loaded versions in line with the configs and the version directories."""
        async with self._lock:
            configs = dict(self._configs)
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(
                self._executor, lambda: {n: version_dirs.discover(c.base_path) for n, c in configs.items()}
            )
            wanted = {n: {v: found[n][v] for v in c.policy.select(set(found[n]))} for n, c in configs.items()}
            loads = []
            for name, dirs in wanted.items():
                states = self._versions.setdefault(name, {})
                for number, vdir in sorted(dirs.items()):
                    current = states.get(number)
                    if current is not None and current.state == AVAILABLE and current.fingerprint != vdir.fingerprint:
                        # The model store replaced this version's files (same number, new
                        # content): load the new files, keep serving the old ones meanwhile.
                        loads.append(self._reload(name, current, vdir))
                        continue
                    if current is not None and current.state in (LOADING, AVAILABLE):
                        continue
                    if current is not None and current.error and current.fingerprint == vdir.fingerprint:
                        continue  # failed before, files unchanged: do not retry
                    states[number] = _Version(number, LOADING, vdir.path, vdir.fingerprint)
                    loads.append(self._load(name, states[number]))
            if loads:
                await asyncio.gather(*loads)
            self._unload_unwanted(configs, found, wanted)
            self._release_ended()

    async def _load(self, name: str, version: _Version) -> None:
        log.info("loading model version", model=name, version=version.version, path=str(version.path))
        loop = asyncio.get_running_loop()
        try:
            servable = await loop.run_in_executor(self._executor, self._loader, name, version.version, version.path)
        except LoadError as e:
            version.state, version.error_code, version.error = END, e.code, str(e)
        except Exception as e:  # a runtime crashing on a bad file must not take the server down
            version.state, version.error_code, version.error = END, codes.UNKNOWN, f"{version.path}: {e!r}"
        else:
            version.servable, version.state = servable, AVAILABLE
            log.info("model version available", model=name, version=version.version, runtime=servable.runtime)
            return
        log.error("model version failed to load", model=name, version=version.version, error=version.error)

    async def _reload(self, name: str, version: _Version, vdir) -> None:
        loop = asyncio.get_running_loop()
        try:
            servable = await loop.run_in_executor(self._executor, self._loader, name, version.version, vdir.path)
        except Exception as e:  # keep serving what is loaded; the files may be fixed later
            log.error("model version reload failed, keeping the loaded one", model=name, version=version.version, error=str(e))
        else:
            old, version.servable = version.servable, servable
            self._retire(old)
            log.info("model version reloaded", model=name, version=version.version, runtime=servable.runtime)
        version.fingerprint = vdir.fingerprint

    def _unload_unwanted(self, configs: dict[str, ModelConfig], found: dict, wanted: dict) -> None:
        for name in list(self._versions):
            states = self._versions[name]
            keep = wanted.get(name, {})
            successor_up = any(states[v].state == AVAILABLE for v in keep if v in states)
            for number, version in list(states.items()):
                if number in keep:
                    continue
                if version.state == AVAILABLE:
                    dir_present = number in found.get(name, {})
                    if name in configs and dir_present and not successor_up:
                        continue  # keep serving until a wanted version is up
                    self._retire(version.servable)
                    version.state, version.servable = END, None
                    log.info("model version unloaded", model=name, version=number)
                elif version.error:
                    del states[number]  # a failed version no longer wanted is forgotten
            if name not in configs and all(v.state == END for v in states.values()):
                del self._versions[name]

    async def close(self) -> None:
        """Unload everything; returns once the servables' threads have ended (bounded by
        JOIN_SECONDS) and the servables are released."""
        async with self._lock:
            for states in self._versions.values():
                for version in states.values():
                    self._retire(version.servable)
            self._versions.clear()
            # Thread objects only: the joining thread must not hold a servable reference.
            threads = [t for s in self._closing for t in s.threads()]
            await asyncio.to_thread(_join, threads, JOIN_SECONDS)
            left = sorted(t.name for t in threads if t.is_alive())
            if left:
                log.warning("threads of unloaded models still running", threads=left, waited_seconds=JOIN_SECONDS)
            self._release_ended()

    def _retire(self, servable: Servable | None) -> None:
        """Close an unloaded servable and keep it until its threads have ended."""
        if servable is None:
            return
        try:
            servable.close()
        except Exception:
            log.exception("closing a servable failed", model=servable.name, version=servable.version)
        self._closing.append(servable)

    def _release_ended(self) -> None:
        """Drop (here, on the loop thread) the unloaded servables whose threads have ended."""
        self._closing = [s for s in self._closing if any(t.is_alive() for t in s.threads())]

    def versions(self, name: str) -> list[tuple[int, Servable]]:
        """The loaded servables of a model (newest first), for runtime details in status."""
        states = self._versions.get(name, {})
        return sorted(((n, v.servable) for n, v in states.items() if v.servable is not None), reverse=True, key=lambda x: x[0])

    def _label_version(self, name: str, label: str) -> int:
        config = self._configs.get(name)
        number = config.label_version(label) if config else None
        if number is None:
            raise invalid_argument(f"Unrecognized servable version label: {label}")
        return number

    def served(self, name: str, version: int) -> int:
        """Inference requests this version has served since the server started."""
        return self._served.get((name, version), 0)

    def labels(self, name: str) -> dict[str, int]:
        """The version labels of a configured model."""
        config = self._configs.get(name)
        return dict(config.labels) if config else {}

    def servable(self, name: str, version: int | None = None, label: str | None = None, *,
                 infer: bool = False) -> Servable:
        """The AVAILABLE servable for a request: a version, a label, or the default one.
        `infer` marks an inference request: an unversioned one takes part in the canary
        split, and each is counted for the version that serves it."""
        chosen = self._pick(name, version, label, infer)
        if infer:
            key = (name, chosen.version)
            self._served[key] = self._served.get(key, 0) + 1
        return chosen

    def _unversioned(self, name: str, states: dict[int, _Version], split: bool) -> Servable | None:
        """For a model with a `canary` label in the split: the canary for its share of inference
        requests, else `stable`, else the newest version other than the canary; None
        when the model has no canary label or none of those is AVAILABLE."""
        config = self._configs.get(name)
        canary = config.label_version(CANARY) if config else None
        if canary is None or not self.canary.applies(name):
            return None
        picks = []
        if split and self.canary.take(name):
            picks.append(canary)
        stable = config.label_version(STABLE)
        if stable is not None:
            picks.append(stable)
        others = [v.version for v in states.values() if v.state == AVAILABLE and v.version != canary]
        if others:
            picks.append(max(others))
        for number in picks:
            current = states.get(number)
            if current is not None and current.state == AVAILABLE:
                return current.servable
        return None

    def _pick(self, name: str, version: int | None, label: str | None, split: bool) -> Servable:
        states = self._versions.get(name, {})
        if version is None and label is None:
            chosen = self._unversioned(name, states, split)
            if chosen is not None:
                return chosen
            available = [v for v in states.values() if v.state == AVAILABLE]
            if not available:
                if name in self._configs and not (states and all(v.state == END for v in states.values())):
                    # Configured and on its way (a model switch, a sync in progress): a
                    # retryable answer, so Envoy tries a node that has it. Versions that all
                    # failed to load stay a 404, as in TF Serving.
                    raise unavailable(f"Servable not available yet for request: Latest({name})")
                raise not_found(f"Servable not found for request: Latest({name})")
            return max(available, key=lambda v: v.version).servable
        if label is not None:
            version = self._label_version(name, label)
        current = states.get(version)
        if current is not None and current.state == LOADING:
            # On its way (a new version, a model switch): retryable, as for Latest above.
            raise unavailable(f"Servable not available yet for request: Specific({name}, {version})")
        if current is None or current.state != AVAILABLE:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return current.servable

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        """Every known version of a model (newest first), or one version."""
        states = self._versions.get(name, {})
        if label is not None:
            version = self._label_version(name, label)
        if version is not None:
            if version not in states:
                raise not_found(f"Could not find version {version} of model {name}")
            picked = [states[version]]
        else:
            if not states:
                raise not_found(f"Could not find any versions of model {name}")
            picked = sorted(states.values(), key=lambda v: v.version, reverse=True)
        return [VersionStatus(v.version, v.state, v.error_code, v.error) for v in picked]


def _join(threads: list[threading.Thread], seconds: float) -> None:
    """Join the threads, all within `seconds`."""
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
