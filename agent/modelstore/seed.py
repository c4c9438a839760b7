"""First fill of a model store: on the model_repo node, init creates the bucket and
uploads the built-in models the repository does not have yet (safe to run again)."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import botocore.exceptions as bexc
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig

from agent import log as agent_log
from agent.modelstore.client import client_for
from agent.modelstore.config import StoreConfig, SyncOptions
from agent.modelstore.errors import StoreError, describe, error_code
from agent.modelstore.listing import VERSION_RE

log = agent_log.get(__name__)

# Multipart above 16 MiB in 16 MiB parts: the sync fetches each part group in parallel.
_TRANSFER = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=16 << 20, max_concurrency=4)


async def seed_bucket(store: StoreConfig, models_src: Path, *, options: SyncOptions | None = None) -> list[str]:
    """Create the bucket if absent and upload every model under `models_src` whose prefix
    holds nothing yet. Returns the names of the models uploaded."""
    options = options or SyncOptions()
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="modelseed") as pool:
        client = await loop.run_in_executor(pool, client_for, store, options)
        await loop.run_in_executor(pool, _ensure_bucket, client, store)
        uploaded = []
        for model_dir in _model_dirs(Path(models_src)):
            prefix = store.model_prefix(model_dir.name)
            if await loop.run_in_executor(pool, _has_objects, client, store, prefix):
                continue
            files = _files(model_dir)
            await asyncio.gather(
                *(loop.run_in_executor(pool, _upload, client, store, path, prefix + rel) for rel, path in files)
            )
            uploaded.append(model_dir.name)
            log.info("model_store.seeded", model=model_dir.name, files=len(files), location=store.location)
    return uploaded


def _model_dirs(src: Path) -> list[Path]:
    """Model directories under `src`: those holding at least one numeric version."""
    out = []
    for d in sorted(src.iterdir()) if src.is_dir() else []:
        if d.is_dir() and not d.name.startswith(".") and any(VERSION_RE.match(v.name) and v.is_dir() for v in d.iterdir()):
            out.append(d)
    return out


def _files(model_dir: Path) -> list[tuple[str, Path]]:
    """(key suffix, path) of every file in the model's numeric version directories."""
    out = []
    for version in sorted(model_dir.iterdir()):
        if not (version.is_dir() and VERSION_RE.match(version.name)):
            continue  # the sync's own dot-files, or anything a server would not load
        for dirpath, _dirs, names in os.walk(version):
            for name in sorted(names):
                path = Path(dirpath) / name
                out.append((path.relative_to(model_dir).as_posix(), path))
    return out


def _ensure_bucket(client: Any, store: StoreConfig) -> None:
    try:
        client.head_bucket(Bucket=store.bucket)
        return
    except bexc.ClientError as e:
        if error_code(e) not in ("404", "NoSuchBucket", "NotFound"):
            raise StoreError(describe(e, store, "cannot check the bucket")) from e
    except bexc.BotoCoreError as e:
        raise StoreError(describe(e, store, "cannot check the bucket")) from e
    kwargs: dict[str, Any] = {"Bucket": store.bucket}
    if store.region and store.region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": store.region}
    try:
        client.create_bucket(**kwargs)
        log.info("model_store.bucket_created", location=store.location)
    except bexc.ClientError as e:
        if error_code(e) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise StoreError(describe(e, store, "cannot create the bucket")) from e


def _has_objects(client: Any, store: StoreConfig, prefix: str) -> bool:
    try:
        page = client.list_objects_v2(Bucket=store.bucket, Prefix=prefix, MaxKeys=1)
    except (bexc.ClientError, bexc.BotoCoreError) as e:
        raise StoreError(describe(e, store, f"cannot list {prefix}")) from e
    return bool(page.get("KeyCount") or page.get("Contents"))


def _upload(client: Any, store: StoreConfig, path: Path, key: str) -> None:
    try:
        client.upload_file(str(path), store.bucket, key, Config=_TRANSFER)
    except (bexc.ClientError, bexc.BotoCoreError, S3UploadFailedError) as e:
        raise StoreError(describe(e, store, f"cannot upload {key}")) from e
