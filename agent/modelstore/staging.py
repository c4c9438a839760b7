"""Which versions a sync fetches, and what their staging directories already hold.

A version listed in the store is kept when the manifest (or, after a crash between
going live and saving the manifest, its staging journal) proves the live copy; it waits
while an upload is still changing it; otherwise it becomes a Job. Staging a job keeps
every file and every part of a large file that an interrupted sync verified, and
hard-links the unchanged files of a live version being replaced.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from agent import log as agent_log
from agent.modelstore.layout import ModelDir
from agent.modelstore.listing import RemoteModel, RemoteObject
from agent.modelstore.manifest import Files, Journal, Manifest, Parts

log = agent_log.get(__name__)

# A push whose marker is older than this is taken for abandoned: no more quick re-syncs.
PUSH_ABANDONED_SECONDS = 3600.0


@dataclass
class Job:
    """One version to stage and publish."""

    version: int
    objects: dict[str, RemoteObject]
    want: Files
    replace: bool
    journal: Journal | None = None
    fetch: list[RemoteObject] = field(default_factory=list)
    # Parts of large objects already in staging: rel -> (digest algorithm, {part index: digest}).
    parts: dict[str, tuple[str, dict[int, bytes]]] = field(default_factory=dict)
    reused: int = 0  # bytes already in staging (verified earlier, or linked from the live version)
    error: str | None = None


@dataclass
class SyncPlan:
    """What one sync does with the store's versions."""

    jobs: list[Job] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    # Versions whose objects are still changing (an upload in progress); look again after
    # `retry_after` seconds to take them.
    pending: list[int] = field(default_factory=list)
    retry_after: float | None = None


def plan_versions(remote: RemoteModel, live: list[int], manifest: Manifest, mdir: ModelDir, boot: str,
                  settle_seconds: float) -> SyncPlan:
    """Sort remote versions into kept, pending and jobs, and stage the jobs (blocking:
    stats and journals). Saves the manifest when a crashed sync's version is adopted."""
    plan = SyncPlan()
    manifest_dirty = False
    for v in sorted(remote.versions, reverse=True):  # newest first: it is what servers load
        objects = remote.versions[v]
        want = {rel: (o.size, o.etag.raw) for rel, o in objects.items()}
        if v in live and manifest.versions.get(v) == want and files_present(mdir.version(v), want):
            plan.kept.append(v)
            continue
        if v in live and _adopt(mdir, manifest, boot, v, want):
            plan.kept.append(v)
            manifest_dirty = True
            continue
        age = remote.server_time - max(o.modified for o in objects.values())
        if age < settle_seconds:
            plan.pending.append(v)
            plan.retry_after = max(plan.retry_after or 0.0, settle_seconds - max(0.0, age))
            continue
        plan.jobs.append(Job(v, objects, want, replace=v in live))
    for v, started in remote.uploading.items():
        # `models push` is still uploading it: look again soon, unless the push looks
        # abandoned (its marker then stays until an operator deletes the version).
        plan.pending.append(v)
        if remote.server_time - started < PUSH_ABANDONED_SECONDS:
            plan.retry_after = max(plan.retry_after or 0.0, max(1.0, settle_seconds))
    if manifest_dirty:
        manifest.save(mdir.manifest)
    for job in plan.jobs:
        _stage(job, mdir, manifest, boot)
    plan.kept.sort()
    plan.pending.sort()
    return plan


def _adopt(mdir: ModelDir, manifest: Manifest, boot: str, v: int, want: Files) -> bool:
    """After a crash between going live and saving the manifest, the journal of the
    staging directory now at `<v>` proves what it holds."""
    found = Journal.read(mdir.journal(v), boot)
    if found is None:
        return False
    inode, entries = found
    try:
        live_inode = os.stat(mdir.version(v)).st_ino
    except OSError:
        return False
    if live_inode != inode or entries != want or not files_present(mdir.version(v), want):
        return False
    manifest.versions[v] = want
    shutil.rmtree(mdir.staging(v), ignore_errors=True)
    mdir.journal(v).unlink(missing_ok=True)
    log.info("model_sync.adopted", model=mdir.root.name, version=v)
    return True


def _stage(job: Job, mdir: ModelDir, manifest: Manifest, boot: str) -> None:
    """Prepare the staging directory of `job`, keeping every file already verified."""
    staging, jpath = mdir.staging(job.version), mdir.journal(job.version)
    keep: Files = {}
    parts: Parts = {}
    found = Journal.read(jpath, boot)
    inode = _inode(staging)
    if found and inode is not None and found[0] == inode:
        for rel, entry in found[1].items():
            if job.want.get(rel) == entry and _size(staging / rel) == entry[0]:
                keep[rel] = entry
        for rel, (etag, alg, done) in Journal.read_parts(jpath).items():
            want = job.want.get(rel)
            if rel not in keep and want is not None and want[1] == etag and _size(staging / rel) == want[0]:
                parts[rel] = (etag, alg, done)
    else:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        inode = staging.stat().st_ino
    _prune(staging, set(keep) | set(parts))
    job.parts = {rel: (alg, done) for rel, (_etag, alg, done) in parts.items()}
    job.reused = sum(size for size, _ in keep.values())
    if job.replace:
        job.reused += _link_unchanged(job, mdir, manifest, keep)
    job.journal = Journal(jpath, inode, boot, keep, parts)
    job.fetch = [o for rel, o in job.objects.items() if rel not in keep]


def _link_unchanged(job: Job, mdir: ModelDir, manifest: Manifest, keep: Files) -> int:
    """Hard-link files of the live version that did not change into staging (files are
    never rewritten in place, so sharing an inode is safe). Returns bytes reused."""
    old = manifest.versions.get(job.version) or {}
    live, staging = mdir.version(job.version), mdir.staging(job.version)
    linked = 0
    for rel, entry in job.want.items():
        if rel in keep or old.get(rel) != entry or _size(live / rel) != entry[0]:
            continue
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(live / rel, target)
        except OSError:
            continue
        keep[rel] = entry
        linked += entry[0]
    return linked


def cleanup_staging(mdir: ModelDir, versions: Iterable[int]) -> None:
    """Delete staging leftovers of versions the store no longer has, and graveyards."""
    wanted = set(versions)
    try:
        entries = list(os.scandir(mdir.staging_root))
    except FileNotFoundError:
        return
    for e in entries:
        base = e.name.split(".", 1)[0]
        keep = base.isdigit() and int(base) in wanted and ".old-" not in e.name
        if keep:
            continue
        if e.is_dir(follow_symlinks=False):
            shutil.rmtree(e.path, ignore_errors=True)
        else:
            os.unlink(e.path)


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _size(path: Path) -> int | None:
    """Size of a regular file (not following links), else None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def files_present(root: Path, want: Files) -> bool:
    """Every wanted file exists with its size (a stat each; no reading, no hashing)."""
    return all(_size(root / rel) == size for rel, (size, _etag) in want.items())


def _prune(root: Path, keep: set[str]) -> None:
    """Delete everything under `root` but the files in `keep` (relative paths)."""
    for dirpath, dirs, files in os.walk(root, topdown=False):
        for name in files:
            full = os.path.join(dirpath, name)
            if os.path.relpath(full, root).replace(os.sep, "/") not in keep:
                os.unlink(full)
        for name in dirs:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                os.unlink(full)
            elif not os.listdir(full):
                os.rmdir(full)
