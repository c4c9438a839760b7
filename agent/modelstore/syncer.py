"""The agent's model sync loop: sync on start, on every change of store or model, and
every `model.sync.interval` seconds in between."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from agent import log as agent_log
from agent.metrics import Metrics
from agent.modelstore.config import StoreConfig, SyncOptions
from agent.modelstore.layout import ModelDir
from agent.modelstore.sync import SyncResult, sync_model

log = agent_log.get(__name__)

DEFAULT_INTERVAL = 30.0


class ModelSyncer:
    """Keeps `<models_root>/<model>/` of every model of model.name in step with the model
    store, one model after the other. Owned by the agent: it calls `update()` on every
    applied snapshot and runs `run()` as one of its tasks."""

    def __init__(
        self,
        models_root: Path,
        metrics: Metrics,
        *,
        options: SyncOptions | None = None,
        on_result: Callable[[SyncResult], None] | None = None,
    ):
        self.models_root = Path(models_root)
        self.metrics = metrics
        self.options = options or SyncOptions()
        self.on_result = on_result
        self._store: StoreConfig | None = None
        self._models: tuple[str, ...] = ()
        self._results: dict[str, SyncResult] = {}
        self._interval = DEFAULT_INTERVAL
        self._wake = asyncio.Event()
        self._current: asyncio.Task | None = None
        self._syncing = False
        self._syncs = 0
        self._last_result: SyncResult | None = None
        self._last_sync_at: float | None = None
        self._last_success_at: float | None = None
        self._next_sync_at: float | None = None

    def update(self, store: StoreConfig | None, models: str | Sequence[str], interval: float) -> None:
        """Take the parameters of an applied snapshot (one model or several); sync now only
        if the store or the models changed."""
        self._interval = max(1.0, float(interval))
        models = (models,) if isinstance(models, str) else tuple(models)
        if (store, models) == (self._store, self._models):
            return
        self._store, self._models = store, models
        self._results = {m: r for m, r in self._results.items() if m in models}
        log.info("model_sync.target", models=list(models), store=store.public() if store else None)
        if self._current is not None and not self._current.done():
            self._current.cancel()  # it syncs what is no longer wanted; its staging stays for later
        self._wake.set()

    async def run(self) -> None:
        """Sync periodically until cancelled; idle while no store is configured."""
        while True:
            self._wake.clear()
            store, models = self._store, self._models
            if store is None or not models:
                self._next_sync_at = None
                await self._wake.wait()
                continue
            wait = self._interval
            for model in models:
                if (store, models) != (self._store, self._models):
                    break  # update() changed the target: start over with it
                result = await self._sync_once(store, model)
                if result is not None:
                    self._record(result)
                    if result.retry_after is not None:  # a version still uploading: look again soon
                        wait = min(wait, result.retry_after + 0.1)
            self._next_sync_at = time.time() + wait
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
            # that arrives as the wake-up does, and the agent could then not stop us.
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _sync_once(self, store: StoreConfig, model: str) -> SyncResult | None:
        self._current = asyncio.create_task(sync_model(store, model, self.models_root, options=self.options))
        self._syncing = True
        try:
            return await self._current
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the agent is stopping us
            log.info("model_sync.superseded", model=model)
            return None  # update() cancelled it for a new target
        finally:
            self._syncing = False
            self._current = None

    def _record(self, result: SyncResult) -> None:
        self._syncs += 1
        self._last_result = result
        self._results[result.model] = result
        self._last_sync_at = time.time()
        self.metrics.sync_seconds.observe(result.seconds)
        if result.bytes_downloaded:
            self.metrics.sync_bytes.inc(result.bytes_downloaded)
        if result.error:
            self.metrics.sync_errors.inc()
        else:
            self._last_success_at = self._last_sync_at
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception:
                log.exception("model_sync.on_result_failed")

    def status(self) -> dict[str, Any]:
        """JSON-ready state for status and the console (no credentials)."""
        store = self._store
        if store is None:
            state = "disabled"
        elif self._syncing:
            state = "syncing"
        elif any(r.error for r in self._results.values()):
            state = "error"
        else:
            state = "idle"
        result = self._last_result
        first = self._models[0] if self._models else ""
        versions = ModelDir(self.models_root / first).live_versions() if first else []
        return {
            "state": state,
            "model": ", ".join(self._models),
            # Per model: its live versions and its last sync's error.
            "models": {m: {"versions": ModelDir(self.models_root / m).live_versions(),
                           "last_error": self._results[m].error if m in self._results else None}
                       for m in self._models},
            "store": store.public() if store else None,
            "interval": self._interval,
            "syncs": self._syncs,
            "last_sync_at": self._last_sync_at,
            "last_success_at": self._last_success_at,
            "next_sync_at": self._next_sync_at,
            "last_result": result.to_dict() if result else None,
            "last_error": next((r.error for r in self._results.values() if r.error), None),
            "versions": versions,  # the first model's, as before several models
        }
