"""What a model looks like in the store: its numeric versions and their objects.

One listing pass: a delimited listing of the model's prefix finds the version
directories, then each version's keys are listed (pages in parallel across versions).
"""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import Executor
from email.utils import parsedate_to_datetime
from dataclasses import dataclass, field
from typing import Any

from agent import log as agent_log
from agent.modelstore.etag import ETag, parse_etag

log = agent_log.get(__name__)

# TF Serving's version directories: a non-negative integer, written canonically.
VERSION_RE = re.compile(r"^(0|[1-9][0-9]{0,18})$")
# Put first and deleted last by `models push`: a version holding it is still being uploaded.
PUSH_MARKER = ".inference-agent-push"


@dataclass(frozen=True)
class RemoteObject:
    """One object of a version: `rel` is its path inside the version directory."""

    key: str
    rel: str
    size: int
    etag: ETag
    modified: float = 0.0  # LastModified, epoch seconds (the store's clock)


@dataclass
class RemoteModel:
    """Every loadable version of one model in the store."""

    versions: dict[int, dict[str, RemoteObject]] = field(default_factory=dict)
    # Keys or version prefixes that cannot become local files, with the reason.
    ignored: dict[str, str] = field(default_factory=dict)
    # Versions a `models push` is still uploading (marker present): when the marker was
    # written, by the store's clock. Never taken, never retired.
    uploading: dict[int, float] = field(default_factory=dict)
    objects_listed: int = 0
    # The store's clock when it was listed (its Date header), to judge how fresh objects are.
    server_time: float = 0.0


def safe_relpath(rel: str) -> str | None:
    """`rel` when it is a safe relative file path (no '..', '.', empty parts or NUL), else None."""
    if not rel or rel.startswith("/") or "\x00" in rel or len(rel.encode()) > 4000:
        return None
    parts = rel.split("/")
    if any(p in ("", ".", "..") or len(p.encode()) > 255 for p in parts):
        return None
    return rel


def _conflicts(rels: list[str]) -> list[str]:
    """Paths that are both a file and a directory of other files (cannot exist on disk)."""
    files = set(rels)
    bad = []
    for rel in rels:
        parts = rel.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in files:
                bad.append("/".join(parts[:i]))
    return sorted(set(bad))


def _pages(client: Any, **kwargs: Any) -> list[dict]:
    return list(client.get_paginator("list_objects_v2").paginate(**kwargs, PaginationConfig={"PageSize": 1000}))


def _version_dirs(client: Any, bucket: str, prefix: str) -> tuple[list[str], int, list[str]]:
    """(version prefixes, objects seen directly under prefix, other directory prefixes)."""
    versions, others, loose = [], [], 0
    for page in _pages(client, Bucket=bucket, Prefix=prefix, Delimiter="/"):
        loose += len(page.get("Contents", ()))
        for cp in page.get("CommonPrefixes", ()):
            name = cp["Prefix"][len(prefix):].rstrip("/")
            (versions if VERSION_RE.match(name) else others).append(cp["Prefix"])
    return versions, loose, others


def _version_objects(client: Any, bucket: str, vprefix: str) -> tuple[list[dict], float]:
    """Every object under `vprefix`, and the store's clock at the last page."""
    out: list[dict] = []
    now = 0.0
    for page in _pages(client, Bucket=bucket, Prefix=vprefix):
        out.extend(page.get("Contents", ()))
        now = max(now, _date(page))
    return out, now


def _date(page: dict) -> float:
    date = page.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        return parsedate_to_datetime(date).timestamp() if date else 0.0
    except (TypeError, ValueError):
        return 0.0


async def list_model(client: Any, bucket: str, prefix: str, executor: Executor) -> RemoteModel:
    """List the versions of the model stored under `prefix` (which ends in '/')."""
    loop = asyncio.get_running_loop()
    vprefixes, loose, others = await loop.run_in_executor(executor, _version_dirs, client, bucket, prefix)
    model = RemoteModel(objects_listed=loose)
    for other in others:
        model.ignored[other] = "not a numeric version directory"
    listings = await asyncio.gather(
        *(loop.run_in_executor(executor, _version_objects, client, bucket, vp) for vp in vprefixes)
    )
    for vprefix, (contents, now) in zip(vprefixes, listings):
        model.objects_listed += len(contents)
        model.server_time = max(model.server_time, now)
        version = int(vprefix[len(prefix):].rstrip("/"))
        objects: dict[str, RemoteObject] = {}
        for item in contents:
            key = item["Key"]
            if key.endswith("/"):
                continue  # a directory marker some upload tools create
            if key == vprefix + PUSH_MARKER:
                model.uploading[version] = item["LastModified"].timestamp() if "LastModified" in item else 0.0
                continue
            rel = safe_relpath(key[len(vprefix):])
            if rel is None:
                model.ignored[key] = "unsafe file name"
                continue
            modified = item["LastModified"].timestamp() if "LastModified" in item else 0.0
            objects[rel] = RemoteObject(key, rel, int(item["Size"]), parse_etag(item.get("ETag", "")), modified)
        conflicts = _conflicts(list(objects))
        if version in model.uploading:
            pass  # still uploading: neither a version nor a problem yet
        elif conflicts:
            model.ignored[vprefix] = f"paths that are both a file and a directory: {', '.join(conflicts[:3])}"
        elif objects:
            model.versions[version] = objects
        else:
            model.ignored[vprefix] = "empty version directory"
    if not model.server_time:
        model.server_time = time.time()
    if model.ignored:
        log.warning("model_store.ignored_keys", prefix=prefix, count=len(model.ignored),
                    sample=dict(list(model.ignored.items())[:5]))
    return model
