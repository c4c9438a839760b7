"""Model store sync: the model's versions in MinIO or S3-compatible object storage,
mirrored onto local disk atomically, version by version.

Public interface (imports stay light: boto3 loads only to upload, for a push or the seed):
    StoreConfig, store_config_for   - where the store is (config)
    sync_model, SyncResult          - one sync of one model (sync)
    ModelSyncer                     - the agent's periodic sync loop (syncer)
    seed_bucket                     - first upload of built-in models (seed)
    push_to_store, push_to_root     - `models push`: one version, never seen half-written (push)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.modelstore.config import StoreConfig, SyncOptions, store_config_for

if TYPE_CHECKING:
    from agent.modelstore.errors import StoreError
    from agent.modelstore.seed import seed_bucket
    from agent.modelstore.progress import Progress
    from agent.modelstore.sync import SyncResult, sync_model
    from agent.modelstore.syncer import ModelSyncer

_LAZY = {
    "StoreError": "agent.modelstore.errors",
    "seed_bucket": "agent.modelstore.seed",
    "Progress": "agent.modelstore.progress",
    "SyncResult": "agent.modelstore.sync",
    "sync_model": "agent.modelstore.sync",
    "ModelSyncer": "agent.modelstore.syncer",
}

__all__ = ["StoreConfig", "SyncOptions", "store_config_for", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
